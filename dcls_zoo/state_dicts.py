"""State-dict hygiene: the one home for reading, cleaning, checking and writing weights.

Every path that moves weights in or out of dcls-zoo (pretrained downloads, the authors' files,
Lightning checkpoints, exports, ``dcls-zoo convert``) goes through these functions:

- :func:`load_torch_file`: ``torch.load(weights_only=True)`` with errors that name the file and
  say what is wrong (refused pickle, truncated or garbled file, missing file);
- :func:`read_safetensors` / :func:`save_safetensors`: safetensors in and out; writes are atomic
  (a temporary file beside the target, flushed to disk, then renamed), so a failure (a full disk,
  an interrupt) never leaves a truncated file under the real name;
- :func:`select_weights`: which state dict of a checkpoint (EMA or raw) in each layout we know;
- :func:`clean_state_dict`: the model's entries without their LightningModule attribute prefix
  and without wrapper prefixes (DDP ``module.``, ``torch.compile`` ``_orig_mod.``);
- :func:`check_state_dict` / :func:`load_state_dict_strict`: exact keys and shapes, or a
  :class:`CheckpointMismatchError` naming every difference;
- :func:`sha256_file`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .errors import CheckpointMismatchError, ChecksumMismatchError, UnsafeFileNameError, WeightsFileError, short_list

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "MODEL_PREFIXES",
    "CleanedStateDict",
    "atomic_path",
    "check_state_dict",
    "clean_state_dict",
    "confined_path",
    "load_state_dict_strict",
    "load_torch_file",
    "read_safetensors",
    "require_tensors",
    "save_safetensors",
    "select_weights",
    "sha256_file",
    "verify_sha256",
]

#: The weights file of an export directory and of our Hub repos (safetensors only).
WEIGHTS_NAME = "model.safetensors"
#: timm's model config of an export directory and of our Hub repos.
CONFIG_NAME = "config.json"
#: LightningModule attributes that commonly hold the network (``self.model``, ``self.net``) and
#: DDP's wrapper; the one that prefixes most keys is taken as the model's prefix.
MODEL_PREFIXES = ("model.", "net.", "module.")
# Prefixes a wrapper puts on every key (DDP, torch.compile), in either order.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# reading


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(
    path: str | os.PathLike[str], expected: str | None, source: str, advice: str = "Delete it to download it again."
) -> None:
    """Raise :class:`~dcls_zoo.errors.ChecksumMismatchError` unless ``path`` has sha256 ``expected``
    (``None``: no check).

    ``advice`` ends the message (a downloaded file can be fetched again; an export must be rewritten).
    """
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"sha256 mismatch for {source}: the file {os.fspath(path)} has sha256 {actual}; its record (weights "
            f"table or export config) names {expected}. The file is truncated, corrupted or not the published one; "
            f"it is not loaded. {advice}"
        )


def plain_file_name(name: str, origin: str) -> str:
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.sep in name
        or (os.altsep and os.altsep in name)
    ):
        raise UnsafeFileNameError(
            f"refusing the file name {name!r} from {origin}: a file named by a download or a config must have a "
            "plain name (no path separator, no '..'), so that it stays in its directory"
        )
    return name


def confined_path(directory: str | os.PathLike[str], name: str, origin: str = "a download") -> Path:
    """``directory / name``, after checking that ``name`` is a plain file name and that the resolved
    path is inside the resolved ``directory``.

    Every file read or written under a name this project did not choose (a URL's file name, a Hub
    file name, a name an export's config records) goes through here.

    Raises:
        UnsafeFileNameError: a name with a separator, ``..`` or a NUL, or one that resolves outside
            (e.g. through a symlink planted in the directory).
    """
    directory = Path(directory)
    path = directory / plain_file_name(name, origin)
    resolved_directory = directory.resolve()
    if path.resolve().parent != resolved_directory:
        raise UnsafeFileNameError(f"refusing {path} (from {origin}): it resolves outside {resolved_directory}")
    return path


def load_torch_file(
    path: str | os.PathLike[str],
    *,
    what: str = "torch file",
    allowed_globals: Iterable[type] = (argparse.Namespace,),
    mmap: bool = False,
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with errors that say why.

    ``argparse.Namespace`` is allowed by default because training scripts (the authors', facebook
    ConvNeXt's) store their ``args`` beside the weights; its contents are still restricted by the
    weights-only unpickler.

    Args:
        path: the file.
        what: how messages name the file (``"checkpoint"``, ``"the authors' file"``).
        allowed_globals: classes the weights-only unpickler may rebuild besides tensors and containers.
        mmap: map the tensors from the file instead of reading them (a quick check of a large
            checkpoint: the pickle and the archive's directory are read and checked, the tensor
            bytes are not); files in torch's old non-zip format are read whole.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError (a ``ValueError``): the file holds other objects (it is never unpickled),
            or it is truncated or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {os.fspath(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            if mmap and zipfile.is_zipfile(path):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = str(error).strip().splitlines()
        # A refused object names its global or class; other messages ("Unsupported operand") mean
        # the bytes are no pickle torch wrote.
        markers = ("GLOBAL", "Unsupported global", "Unsupported class")
        refused = next((line for line in lines if any(marker in line for marker in markers)), None)
        if refused is None:  # not a refused object: bytes that are no pickle at all
            raise _unreadable(path, what, error, "torch") from error
        # Keep torch's line naming the offending global, without its long advice text.
        reason = refused.split(" Please use", 1)[0].rstrip(".").strip()
        raise WeightsFileError(
            f"refusing to load {what} {os.fspath(path)!r}: it holds objects other than tensors and plain "
            f"containers, and is only read with weights_only=True ({reason}). If you trust the file, load it "
            "yourself (torch.load(..., weights_only=False)) and pass the state dict"
        ) from error
    except Exception as error:  # the weights-only unpickler fails in many ways on garbage (IndexError, ...)
        raise _unreadable(path, what, error, "torch") from error


def _unreadable(path: Path, what: str, error: BaseException, kind: str) -> WeightsFileError:
    return WeightsFileError(
        f"cannot read {what} {os.fspath(path)!r} ({path.stat().st_size:,} bytes; {_first_sentence(error)}): it is "
        f"truncated or corrupted, or not a {kind} file"
    )


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text.split('. ', 1)[0].rstrip('.')}" if text else type(error).__name__


def read_safetensors(path: str | os.PathLike[str], *, what: str = "safetensors file") -> dict[str, Tensor]:
    """The tensors of a safetensors file (on the CPU).

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: a truncated, garbled or non-safetensors file (naming it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {os.fspath(path)!r} does not exist")
    try:
        return load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, what, error, "safetensors") from error


# --------------------------------------------------------------------------------------------
# writing


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path beside ``path`` to write to; on success it
    is flushed to disk and renamed to ``path``, on any failure removed (``path`` untouched).

        with atomic_path(directory / "config.json") as temporary:
            temporary.write_text(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp (or a writer) made it 0600; give it the usual mode
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def save_safetensors(tensors: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` atomically (:func:`atomic_path`), moved to the CPU and contiguous.

    On any failure (a full disk, an interrupt) an existing ``path`` is left as it was.

    Raises:
        ValueError: tensors that share memory (safetensors cannot store ties).
        OSError: the write failed (the message is the system's, e.g. ``ENOSPC``).
    """
    from safetensors.torch import save_file

    data = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    with atomic_path(path) as temporary:
        try:
            save_file(data, os.fspath(temporary), metadata=dict(metadata or {}))
        except RuntimeError as error:
            if "share memory" not in str(error):
                raise
            raise ValueError(
                f"the state dict has tensors that share memory, which safetensors cannot store ({error}); "
                "dcls-zoo models store shared positions once, so this comes from a custom tie"
            ) from error
    return Path(path)


# --------------------------------------------------------------------------------------------
# which weights, under which names


# (raw key, averaged key, where): the checkpoint layouts that hold EMA weights beside raw ones.
_EMA_LAYOUTS = (
    ("current_model_state", "state_dict", "Lightning WeightAveraging (state_dict; raw weights in current_model_state)"),
    ("state_dict", "state_dict_ema", "state_dict_ema"),
    ("state_dict", "ema_state_dict", "ema_state_dict"),
    ("model", "model_ema", "the training script's model_ema"),
)
_PLAIN_KEYS = ("state_dict", "model")


def select_weights(
    checkpoint: Mapping[str, Any], ema: bool | None = None, *, key: str | None = None
) -> tuple[Mapping[str, Any], str]:
    """The state dict a checkpoint holds, and a phrase saying which one.

    Layouts: Lightning's ``WeightAveraging`` (averaged weights in ``state_dict``, raw ones in
    ``current_model_state``); ``state_dict`` with ``state_dict_ema`` / ``ema_state_dict``; the
    authors' ``model`` with ``model_ema``; a bare ``state_dict`` or ``model``; a bare
    ``{name: Tensor}``.

    Args:
        checkpoint: the loaded file.
        ema: ``None``: the EMA weights when present, else the raw ones; ``True``: the EMA weights
            (an error without them); ``False``: the raw ones.
        key: take ``checkpoint[key]`` instead (``ema`` is then ignored).

    Returns:
        ``(the selected mapping itself, description)``; :func:`require_tensors` checks its values.

    Raises:
        ValueError: no such ``key``, no EMA weights with ``ema=True``, or no mapping there.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    if key is not None:
        if key not in checkpoint:
            raise ValueError(f"the checkpoint has no key {key!r}; its top-level keys: {short_list(sorted(map(str, checkpoint)))}")
        chosen, where = checkpoint[key], f"checkpoint[{key!r}]"
    else:
        raw = averaged = None
        raw_key, where = "", ""
        for index, (raw_name, averaged_name, description) in enumerate(_EMA_LAYOUTS):
            has_raw = isinstance(checkpoint.get(raw_name), Mapping)
            # WeightAveraging's averaged weights sit under the plain name: they count only beside
            # current_model_state. The other layouts may hold the EMA weights alone.
            if isinstance(checkpoint.get(averaged_name), Mapping) and (has_raw or index > 0):
                averaged, where = checkpoint[averaged_name], description
                if has_raw:
                    raw, raw_key = checkpoint[raw_name], raw_name
                break
        if raw is None and averaged is None:
            raw_key = next((name for name in _PLAIN_KEYS if isinstance(checkpoint.get(name), Mapping)), "")
            raw = checkpoint[raw_key] if raw_key else checkpoint
        if ema is True and averaged is None:
            raise ValueError(
                "ema=True: the checkpoint has no EMA weights (no WeightAveraging current_model_state, no "
                "state_dict_ema / ema_state_dict / model_ema); read its raw weights with ema=False"
            )
        if averaged is not None and (ema is not False or raw is None):
            if ema is False:
                raise ValueError(f"ema=False: the checkpoint holds only EMA weights ({where}); read them with ema=True")
            chosen, where = averaged, f"EMA weights from {where}"
        else:
            chosen, where = raw, f"raw weights ({raw_key or 'the bare state dict'})"
    if not isinstance(chosen, Mapping):
        raise ValueError(f"{where} is a {type(chosen).__name__}, not a state dict; pick the weights with key=...")
    return chosen, where


def require_tensors(state: Mapping[str, Any], where: str) -> dict[str, Tensor]:
    """``state`` as a new ``{name: Tensor}`` dict, or a ValueError naming the non-tensor entries."""
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{where} is not a state dict of tensors (non-tensor entries: {short_list(not_tensors)}); pick the "
            "weights with key=..."
        )
    return dict(state)


class CleanedStateDict(NamedTuple):
    """What :func:`clean_state_dict` returns: the state, the prefix removed, the entries dropped."""

    state_dict: dict[str, Tensor]
    prefix: str
    ignored: int


def clean_state_dict(state: Mapping[str, Tensor], prefix: str | None = None) -> CleanedStateDict:
    """The model's entries of ``state``, under the names the model itself uses.

    Keeps the keys under ``prefix`` (a LightningModule attribute such as ``"model."``; detected
    when ``None``: the one of :data:`MODEL_PREFIXES` that starts most keys, or none) without it,
    then removes wrapper prefixes that start every key (DDP ``module.``, ``torch.compile``
    ``_orig_mod.``).

    Raises:
        ValueError: no entry starts with the given ``prefix``.
    """
    if prefix is None:
        counts = {candidate: sum(k.startswith(candidate) for k in state) for candidate in MODEL_PREFIXES}
        best = max(counts, key=counts.__getitem__)
        prefix = best if counts[best] else ""
    kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not kept:
        raise ValueError(f"no state_dict entry starts with {prefix!r}; name the model's attribute with prefix=...")
    stripped = True
    while stripped:
        stripped = False
        for wrapper in _WRAPPER_PREFIXES:
            if all(k.startswith(wrapper) for k in kept):
                kept = {k[len(wrapper) :]: v for k, v in kept.items()}
                stripped = True
    return CleanedStateDict(kept, prefix, len(state) - len(kept))


# --------------------------------------------------------------------------------------------
# strict checks


def _shapes(source: nn.Module | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    state = source.state_dict() if isinstance(source, nn.Module) else source
    return {key: tuple(value.shape) for key, value in state.items()}


def check_state_dict(
    model: nn.Module | Mapping[str, Any], state_dict: Mapping[str, Any], what: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` has exactly ``model``'s keys and shapes.

    ``model`` may be a module or its state dict (tensors, or anything with a ``shape``).
    """
    target, given = _shapes(model), _shapes(state_dict)
    missing = [key for key in target if key not in given]
    unexpected = [key for key in given if key not in target]
    mismatched = [(key, shape, target[key]) for key, shape in given.items() if key in target and shape != target[key]]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, what)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], what: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model``, or raise before touching it.

    Raises:
        CheckpointMismatchError (a ``ValueError``): naming the missing keys, unexpected keys and
            shape mismatches (checkpoint shape vs model shape), all at once.
    """
    check_state_dict(model, state_dict, what)
    model.load_state_dict(state_dict, strict=True)
