"""Pretrained weights: where each model's weights live, how they are fetched, and how they are checked.

:data:`PRETRAINED_WEIGHTS` maps a pretrained tag (``"convnext_dcls_tiny.in1k"``) to a
:class:`PretrainedWeights` row: the Hugging Face Hub repo, file and revision of our safetensors
file, its sha256, and a fallback (the authors' Zenodo file, converted on load). The registered
builders (:mod:`dcls_zoo.models.convnext_dcls`, :mod:`dcls_zoo.models.resnet_dcls`) build through
:func:`build_model_with_weights`, so ``timm.create_model``, :func:`dcls_zoo.create_model` and the
``torch.hub`` entry points all resolve ``pretrained=True`` here:

1. **The Hub repo** (``huggingface_hub.hf_hub_download``: its cache, ``HF_ENDPOINT``,
   ``HF_HUB_OFFLINE``, the pinned revision), safetensors only. It wins whenever it answers.
2. **The fallback**, when the Hub answers that the repo or the file does not exist
   (``RepositoryNotFound``, ``EntryNotFound``, a plain 404; a pinned revision that does not exist is
   an error instead): the authors' released file, downloaded into
   ``<torch.hub.get_dir()>/checkpoints`` (or ``cache_dir``) with a progress bar, read with
   ``torch.load(weights_only=True)`` (a file that needs more than tensors is refused, never
   unpickled) and converted by :mod:`dcls_zoo.convert`. ``DCLS_ZOO_ZENODO_URL`` points the fallback
   at a mirror of the authors' files (same file names).
3. **Offline or unreachable Hub** (``HF_HUB_OFFLINE=1``, no connection): the Hub file from the
   Hugging Face cache; else a fallback file already in the download cache; else an error naming the
   caches, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the fallback URL. Nothing is downloaded offline.

A row's ``sha256`` (and ``fallback_sha256``), when given, is enforced on every load: a different
file (tampered, truncated, replaced) raises :class:`ChecksumMismatchError`. Our Hub repos are not
published yet: their ids are the planned names and their checksums ``None`` until they are.

Explicit sources still work as in timm: ``pretrained_cfg_overlay=dict(url=...)`` loads only that
URL (an authors' ``.pth`` or a ``.safetensors``, through the same safe loader and converter);
``dict(hf_hub_id="org/repo@revision")`` (or ``create_model(..., revision=...)``) loads only that
Hub revision; ``dict(file=...)``/``dict(state_dict=...)`` and ``hf-hub:``/``local-dir:`` names
are left to timm unchanged. The table's checksums apply to the table's own sources only.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from torch import Tensor, nn

__all__ = [
    "ZENODO_URL_ENV",
    "DEFAULT_FILENAME",
    "PRETRAINED_WEIGHTS",
    "PretrainedWeights",
    "PretrainedWeightsError",
    "ChecksumMismatchError",
    "WeightsFile",
    "build_model_with_weights",
    "describe_weights",
    "fetch_pretrained",
    "get_pretrained_weights",
    "hub_id_at_revision",
    "load_pretrained_state_dict",
    "sha256_file",
]

_logger = logging.getLogger(__name__)

#: Environment variable: base URL of a mirror of the authors' Zenodo files (the file name is
#: appended), used instead of zenodo.org for the fallback. The table's checksums still apply.
ZENODO_URL_ENV = "DCLS_ZOO_ZENODO_URL"
#: The file our Hub repos hold (safetensors only).
DEFAULT_FILENAME = "model.safetensors"
_HUB_ORG = "dcls-zoo"
_ZENODO_BILINEAR = "https://zenodo.org/record/7112021/files/"
_ZENODO_GAUSS = "https://zenodo.org/record/8029747/files/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be found, fetched or read (the message says which and why)."""


class ChecksumMismatchError(PretrainedWeightsError):
    """A weights file whose sha256 is not the one its pretrained config names."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One row of :data:`PRETRAINED_WEIGHTS`: where one pretrained tag's weights live.

    Attributes:
        hf_hub_id: the Hub model repo holding our safetensors file (``"dcls-zoo/<arch>.<tag>"``).
        filename: the weights file in that repo (safetensors).
        revision: the Hub revision (branch, tag or commit) the file is pinned to; ``None`` is
            ``"main"``.
        sha256: the file's sha256 at that revision, enforced when given; ``None`` until the repo is
            published.
        fallback_url: the authors' released file (a torch pickle in their layout), used when the Hub
            repo or file does not exist; converted on load. ``None``: no fallback.
        fallback_sha256: the fallback file's sha256, enforced when given.
    """

    hf_hub_id: str
    filename: str = DEFAULT_FILENAME
    revision: str | None = None
    sha256: str | None = None
    fallback_url: str | None = None
    fallback_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.hf_hub_id.count("/") != 1 or "@" in self.hf_hub_id:
            raise ValueError(f"hf_hub_id must be 'org/name' (no revision), got {self.hf_hub_id!r}")
        if not self.filename.endswith(".safetensors"):
            raise ValueError(f"Hub weights are safetensors only, got filename {self.filename!r}")
        for name in ("sha256", "fallback_sha256"):
            value = getattr(self, name)
            if value is not None and not _SHA256.match(value):
                raise ValueError(f"{name} must be 64 lowercase hex digits or None, got {value!r}")

    @property
    def published(self) -> bool:
        """Whether the Hub file is published (its checksum is known)."""
        return self.sha256 is not None


def _planned(arch_tag: str, fallback_url: str | None = None) -> PretrainedWeights:
    return PretrainedWeights(hf_hub_id=f"{_HUB_ORG}/{arch_tag}", fallback_url=fallback_url)


#: Pretrained tag -> where its weights live. The Hub repos are planned names (not published yet,
#: sha256 None); the fallbacks are the authors' EMA files (Zenodo 7112021: bilinear, H-first
#: positions; 8029747: Gaussian, W-first), whose checksums were never published either.
#: ResNet-50-dcls has no row: its checkpoints' file names in Zenodo 8373830 are unverified.
PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = {
    "convnext_dcls_tiny.in1k": _planned("convnext_dcls_tiny.in1k", _ZENODO_BILINEAR + "convnext_dcls_tiny_1k_224_ema.pth"),
    "convnext_dcls_small.in1k": _planned("convnext_dcls_small.in1k", _ZENODO_BILINEAR + "convnext_dcls_small_1k_224_ema.pth"),
    "convnext_dcls_base.in1k": _planned("convnext_dcls_base.in1k", _ZENODO_BILINEAR + "convnext_dcls_base_1k_224_ema.pth"),
    "convnext_dcls_gauss_tiny.in1k": _planned(
        "convnext_dcls_gauss_tiny.in1k", _ZENODO_GAUSS + "convnext_dcls_gauss_tiny_1k_224_ema.pth"
    ),
}


# --------------------------------------------------------------------------------------------
# names


def _check_architecture(arch: str, what: str = "model") -> None:
    if not timm.is_model(arch):
        from .models.factory import list_models

        zoo = list_models()
        close = difflib.get_close_matches(arch, zoo + timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; dcls-zoo models: {', '.join(zoo)}"
        raise ValueError(f"unknown architecture {arch!r} in the {what}{hint}")


def _available() -> str:
    return ", ".join(sorted(PRETRAINED_WEIGHTS)) or "none"


def get_pretrained_weights(name: str) -> tuple[str, PretrainedWeights]:
    """The table row of ``name`` (``"arch"`` for its default tag, or ``"arch.tag"``).

    Returns:
        ``("arch.tag", row)``.

    Raises:
        ValueError: the architecture is not registered (naming it, with close matches).
        PretrainedWeightsError: a known model or tag without weights (listing those with weights).
    """
    arch, _, tag = name.partition(".")
    _check_architecture(arch, "pretrained weights name")
    if not tag:
        tag = timm.models.get_pretrained_cfg(arch).tag or ""
    key = f"{arch}.{tag}" if tag else arch
    if key not in PRETRAINED_WEIGHTS:
        raise PretrainedWeightsError(f"No pretrained weights exist for {key}; weights exist for: {_available()}")
    return key, PRETRAINED_WEIGHTS[key]


def hub_id_at_revision(name: str, revision: str) -> str:
    """``"org/repo@revision"`` for ``name``'s Hub repo: the ``hf_hub_id`` overlay that pins a revision."""
    if not revision or "@" in revision:
        raise ValueError(f"revision must be a branch, tag or commit, got {revision!r}")
    return f"{get_pretrained_weights(name)[1].hf_hub_id}@{revision}"


def describe_weights(name: str) -> str:
    """One paragraph on where ``name``'s pretrained weights come from (for docstrings and help)."""
    tags = sorted(key for key in PRETRAINED_WEIGHTS if key.split(".", 1)[0] == name)
    if not tags:
        return "No pretrained weights: pretrained=True raises."
    lines = []
    default = timm.models.get_pretrained_cfg(name).tag
    for key in tags:
        row = PRETRAINED_WEIGHTS[key]
        tag = key.split(".", 1)[1]
        hub = f"Hugging Face Hub {row.hf_hub_id} ({row.filename}"
        hub += f", revision {row.revision}" if row.revision else ""
        hub += ", sha256-checked)" if row.published else ", not published yet)"
        line = f"'{tag}'{' (default)' if tag == default else ''}: {hub}"
        if row.fallback_url:
            line += f"; falls back to the authors' file {row.fallback_url}, converted on load"
        lines.append(line + ".")
    return " ".join(lines)


# --------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class _HubSource:
    repo_id: str
    filename: str
    revision: str | None
    sha256: str | None

    def __str__(self) -> str:
        return f"Hugging Face Hub {self.repo_id}@{self.revision or 'main'}/{self.filename}"


@dataclass(frozen=True)
class _UrlSource:
    url: str
    sha256: str | None

    def __str__(self) -> str:
        return self.url


_Source = _HubSource | _UrlSource


@dataclass(frozen=True)
class WeightsFile:
    """A verified local weights file.

    Attributes:
        path: the file (in the Hugging Face cache or the download cache).
        source: where it came from (``"Hugging Face Hub org/repo@rev/file"`` or the URL).
        format: ``"safetensors"`` (our layout) or ``"torch"`` (a torch file, e.g. the authors').
        hf_hub_id: ``"org/repo"`` (``@revision`` when pinned) for Hub files, else ``None``.
        url: the URL for downloaded files, else ``None``.
    """

    path: Path
    source: str
    format: Literal["safetensors", "torch"]
    hf_hub_id: str | None = None
    url: str | None = None


def _mirror(url: str) -> str:
    base = os.environ.get(ZENODO_URL_ENV, "").strip()
    if not base:
        return url
    return base.rstrip("/") + "/" + _url_basename(url)


def _url_basename(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise PretrainedWeightsError(f"cannot name a cache file after URL {url!r} (no file name in its path)")
    return urllib.parse.unquote(name)


def _split_hub_id(hub_id: str) -> tuple[str, str | None]:
    repo, _, revision = hub_id.partition("@")
    return repo, revision or None


def _registered_cfg(arch: str, tag: str | None) -> Any:
    try:
        return timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    except RuntimeError:
        return None


def _explicit(arch: str, tag: str | None, url: str | None, hf_hub_id: str | None) -> tuple[str | None, str | None]:
    """The ``url``/``hf_hub_id`` of a resolved config that differ from the registered config's:
    the caller's explicit choices (``pretrained_cfg_overlay``, ``revision=``)."""
    registered = _registered_cfg(arch, tag)
    explicit_url = url if url and url != getattr(registered, "url", None) else None
    explicit_hub = hf_hub_id if hf_hub_id and hf_hub_id != getattr(registered, "hf_hub_id", None) else None
    return explicit_url, explicit_hub


def _sources(
    arch: str,
    tag: str | None,
    *,
    explicit_url: str | None = None,
    explicit_hub: str | None = None,
    filename: str | None = None,
    registered_url: str | None = None,
    registered_hub: str | None = None,
) -> list[_Source]:
    """The sources to try, in order.

    Explicit sources replace the table's: only they are tried (Hub first), with the table's
    checksum only where they are the table's own file. Otherwise the table row's Hub repo, then
    its fallback (through the ``DCLS_ZOO_ZENODO_URL`` mirror when set). A registered config
    without a table row (not one of ours) gives its own ``hf_hub_id``/``url``, unchecked.
    """
    key = f"{arch}.{tag}" if tag else arch
    row = PRETRAINED_WEIGHTS.get(key)
    sources: list[_Source] = []
    if explicit_url or explicit_hub:
        if explicit_hub:
            repo, revision = _split_hub_id(explicit_hub)
            name = filename or (row.filename if row else DEFAULT_FILENAME)
            sha = None
            if row and repo == row.hf_hub_id and name == row.filename:
                revision = revision or row.revision
                sha = row.sha256 if revision == row.revision else None
            sources.append(_HubSource(repo, name, revision, sha))
        if explicit_url:
            sha = row.fallback_sha256 if row and explicit_url == row.fallback_url else None
            sources.append(_UrlSource(explicit_url, sha))
    elif row is not None:
        sources.append(_HubSource(row.hf_hub_id, row.filename, row.revision, row.sha256))
        if row.fallback_url:
            sources.append(_UrlSource(_mirror(row.fallback_url), row.fallback_sha256))
    else:
        if registered_hub:
            repo, revision = _split_hub_id(registered_hub)
            sources.append(_HubSource(repo, filename or DEFAULT_FILENAME, revision, None))
        if registered_url:
            sources.append(_UrlSource(registered_url, None))
    return sources


# --------------------------------------------------------------------------------------------
# fetching


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected: str | None, source: _Source) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"sha256 mismatch for {source}: the file {path} has sha256 {actual}, its pretrained config names "
            f"{expected}. The file is truncated, corrupted or not the published one; it is not loaded. Delete it "
            f"to download it again."
        )


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _download_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cache(cache_dir: str | os.PathLike[str] | None) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


class _NotOnHub(Exception):
    """The Hub answered: no such repo, or no such file in it (404)."""


class _HubUnreachable(Exception):
    """The Hub could not be asked (offline mode, no connection, server error) and nothing is cached."""


def _status_404(error: BaseException | None) -> bool:
    for _ in range(8):  # the exception chain, cause first
        if error is None:
            return False
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) == 404:
            return True
        error = error.__cause__ or error.__context__
    return False


def _hub_file(source: _HubSource, cache_dir: str | os.PathLike[str] | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from . import __version__

    try:
        path = hf_hub_download(
            source.repo_id,
            source.filename,
            revision=source.revision,
            cache_dir=cache_dir,
            library_name="dcls-zoo",
            library_version=__version__,
        )
    except GatedRepoError as error:
        raise PretrainedWeightsError(f"{source}: the repo is gated and this account has no access ({error})") from error
    except RevisionNotFoundError as error:
        # A pinned revision that does not exist is an error, never a silent fallback.
        raise PretrainedWeightsError(f"{source}: revision {source.revision!r} does not exist in {source.repo_id}") from error
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is one
        if _status_404(error):  # a plain 404 from a server without Hub error codes
            raise _NotOnHub(str(error)) from error
        raise _HubUnreachable(str(error.__cause__ or error)) from error
    except (RepositoryNotFoundError, EntryNotFoundError) as error:
        raise _NotOnHub(str(error).splitlines()[0]) from error
    return Path(path)


def _url_file(
    source: _UrlSource, cache_dir: str | os.PathLike[str] | None, progress: bool, allow_download: bool = True
) -> Path | None:
    """The cached file for ``source`` (downloaded first unless cached); ``None`` when not cached and
    ``allow_download`` is False."""
    directory = _download_dir(cache_dir)
    path = directory / _url_basename(source.url)
    if path.is_file():
        return path
    if not allow_download:
        return None
    if _offline():
        raise PretrainedWeightsError(
            f"offline mode (HF_HUB_OFFLINE=1): not downloading {source.url}, and it is not in the download cache "
            f"({path}). Download it there, or unset HF_HUB_OFFLINE."
        )
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{path.name}.{uuid.uuid4().hex}.partial"
    try:
        _download(source.url, partial, progress, desc=path.name)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _download(url: str, destination: Path, progress: bool, desc: str) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from tqdm.auto import tqdm

    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"dcls-zoo/{__version__}"})
    received = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # disable=None: tqdm shows the bar on a terminal only.
            disable = True if not progress or are_progress_bars_disabled() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=disable) as bar:
                with open(destination, "wb") as file:
                    while chunk := response.read(_CHUNK):
                        file.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise PretrainedWeightsError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from error
    except http.client.IncompleteRead as error:
        raise PretrainedWeightsError(
            f"downloading {url} failed: the connection closed after {received + len(error.partial)} of {total} bytes "
            f"(truncated download; nothing was cached)"
        ) from error
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise PretrainedWeightsError(
            f"downloading {url} failed: {reason}. Check the connection, or set {ZENODO_URL_ENV} to a mirror of the "
            f"authors' files"
        ) from error
    if total is not None and received != total:
        raise PretrainedWeightsError(
            f"downloading {url} failed: received {received} of {total} bytes (truncated download; nothing was cached)"
        )


def _fetch(sources: list[_Source], what: str, cache_dir: str | os.PathLike[str] | None, progress: bool) -> WeightsFile:
    not_found: list[str] = []
    for index, source in enumerate(sources):
        if isinstance(source, _HubSource):
            try:
                path = _hub_file(source, cache_dir)
            except _NotOnHub as error:
                _logger.info("%s: %s not found (%s); trying the next source", what, source, error)
                not_found.append(f"{source} (not found)")
                continue
            except _HubUnreachable as error:
                fallbacks = [s for s in sources[index + 1 :] if isinstance(s, _UrlSource)]
                for fallback in fallbacks:
                    cached = _url_file(fallback, cache_dir, progress, allow_download=False)
                    if cached is not None:
                        _logger.info("%s: the Hub is not reachable (%s); using the cached %s", what, error, cached)
                        _verify(cached, fallback.sha256, fallback)
                        return _weights_file(cached, fallback)
                raise PretrainedWeightsError(_unreachable_message(what, source, fallbacks, cache_dir, error)) from None
            _verify(path, source.sha256, source)
            hub_id = source.repo_id + (f"@{source.revision}" if source.revision else "")
            return WeightsFile(path, str(source), "safetensors", hf_hub_id=hub_id)
        path = _url_file(source, cache_dir, progress)
        assert path is not None
        _verify(path, source.sha256, source)
        return _weights_file(path, source)
    if not sources:
        raise PretrainedWeightsError(f"No pretrained weights exist for {what}; weights exist for: {_available()}")
    raise PretrainedWeightsError(
        f"No pretrained weights found for {what}: {'; '.join(not_found)}, and no fallback is configured"
    )


def _weights_file(path: Path, source: _UrlSource) -> WeightsFile:
    fmt: Literal["safetensors", "torch"] = "safetensors" if path.name.endswith(".safetensors") else "torch"
    return WeightsFile(path, source.url, fmt, url=source.url)


def _unreachable_message(
    what: str, source: _HubSource, fallbacks: list[_UrlSource], cache_dir: str | os.PathLike[str] | None, cause: Any
) -> str:
    from huggingface_hub import constants

    reason = (
        "offline mode is on (HF_HUB_OFFLINE=1)"
        if _offline()
        else f"the Hub at HF_ENDPOINT={constants.ENDPOINT} is not reachable ({cause})"
    )
    message = (
        f"Could not fetch the pretrained weights of {what}: {reason}, and {source} is not in the Hugging Face "
        f"cache ({_hf_cache(cache_dir)})."
    )
    if fallbacks:
        urls = ", ".join(f.url for f in fallbacks)
        message += (
            f" The fallback, {urls}, is not in the download cache ({_download_dir(cache_dir)}) either. Go online "
            f"(unset HF_HUB_OFFLINE), point HF_ENDPOINT at a reachable Hub mirror, or put the fallback file in that "
            f"cache ({ZENODO_URL_ENV} names a mirror of the authors' files)."
        )
    else:
        message += " Go online (unset HF_HUB_OFFLINE) or point HF_ENDPOINT at a reachable Hub mirror."
    return message


def fetch_pretrained(
    name: str,
    *,
    revision: str | None = None,
    url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> WeightsFile:
    """Download (or find in the caches) and verify ``name``'s weights file; nothing is loaded.

    Args:
        name: ``"arch"`` (its default tag) or ``"arch.tag"``.
        revision: load only this Hub revision of the row's repo (no fallback).
        url: load only this URL (an authors' file or a ``.safetensors``); the table's checksum
            applies only when it is the row's own fallback URL.
        cache_dir: Hugging Face cache for Hub files, download directory for URLs.
        progress: show a progress bar for URL downloads (on a terminal).

    Raises:
        ValueError: unknown architecture.
        PretrainedWeightsError: no weights, not found, offline/unreachable, a failed or truncated
            download.
        ChecksumMismatchError: a file whose sha256 is not the configured one.
    """
    key, _ = get_pretrained_weights(name)
    arch, _, tag = key.partition(".")
    hub_id = hub_id_at_revision(key, revision) if revision is not None else None
    return _fetch(_sources(arch, tag, explicit_url=url, explicit_hub=hub_id), key, cache_dir, progress)


def _read_state_dict(weights: WeightsFile, arch: str) -> dict[str, Tensor]:
    """The state dict in ``weights``, in our layout (an authors' file is converted for ``arch``)."""
    from .convert import convert_official_checkpoint, load_official_file

    if weights.format == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(os.fspath(weights.path))
        except Exception as error:  # safetensors raises its own SafetensorError
            raise PretrainedWeightsError(
                f"could not read the safetensors file {weights.path} (from {weights.source}): {error}. It is "
                f"truncated or corrupted: delete it to download it again."
            ) from error
    else:
        try:
            state = load_official_file(weights.path)  # weights_only=True: refuses anything but tensors
        except (RuntimeError, EOFError) as error:
            raise PretrainedWeightsError(
                f"could not read the torch file {weights.path} (from {weights.source}): {error}. It is truncated or "
                f"corrupted: delete it to download it again."
            ) from error
    return convert_official_checkpoint(state, arch)


def load_pretrained_state_dict(
    name: str,
    *,
    revision: str | None = None,
    url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """``name``'s pretrained weights as a state dict in our layout (see :func:`fetch_pretrained`).

    The authors' files are read with ``weights_only=True`` (a file with other objects raises
    ``ValueError``) and converted by :func:`dcls_zoo.convert.convert_official_checkpoint`.
    """
    key, _ = get_pretrained_weights(name)
    weights = fetch_pretrained(key, revision=revision, url=url, cache_dir=cache_dir, progress=progress)
    return _read_state_dict(weights, key.split(".", 1)[0])


# --------------------------------------------------------------------------------------------
# building


def _timm_handles(cfg: Any) -> bool:
    """Sources we leave to timm: ``hf-hub:``/``local-dir:`` names, ``file``, ``state_dict``."""
    return cfg.source in ("hf-hub", "local-dir") or bool(cfg.file) or bool(cfg.state_dict)


def build_model_with_weights(model_cls: Any, variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.models.build_model_with_cfg`` whose ``pretrained=True`` resolves through this module.

    Same arguments as timm's. With ``pretrained``, the weights are fetched, verified, read and
    converted here (see the module docstring) and handed to timm as the config's ``state_dict``,
    so timm still adapts the head (``num_classes``), the input channels and ``features_only``.
    The built model's ``pretrained_cfg`` then names the source used (``hf_hub_id`` or ``url``).

    Raises:
        ValueError: the config names an unknown architecture (naming it).
        PretrainedWeightsError: as :func:`fetch_pretrained`, before the model is built.
    """
    provenance: dict[str, Any] | None = None
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        )
        if not _timm_handles(cfg):
            arch = cfg.architecture or variant
            _check_architecture(arch, "pretrained config")
            what = f"{arch}.{cfg.tag}" if cfg.tag else arch
            explicit_url, explicit_hub = _explicit(arch, cfg.tag, cfg.url, cfg.hf_hub_id)
            sources = _sources(
                arch,
                cfg.tag,
                explicit_url=explicit_url,
                explicit_hub=explicit_hub,
                filename=cfg.hf_hub_filename,
                registered_url=cfg.url,
                registered_hub=cfg.hf_hub_id,
            )
            weights = _fetch(sources, what, kwargs.get("cache_dir"), progress=True)
            _logger.info("%s: loading pretrained weights from %s", what, weights.source)
            state = _read_state_dict(weights, arch)
            kwargs["pretrained_cfg_overlay"] = dict(kwargs.get("pretrained_cfg_overlay") or {}, state_dict=state)
            provenance = {"hf_hub_id": weights.hf_hub_id} if weights.hf_hub_id else {"url": weights.url}
    model = build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    if provenance is not None:
        for cfg_dict in _pretrained_cfgs(model):
            cfg_dict.pop("state_dict", None)  # the tensors are in the model now; never keep a copy
            cfg_dict.update(provenance)
    return model


def _pretrained_cfgs(model: nn.Module) -> list[dict[str, Any]]:
    found = []
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and not any(cfg is other for other in found):
            found.append(cfg)
    return found


def _check_table(table: Mapping[str, PretrainedWeights] = PRETRAINED_WEIGHTS) -> None:
    """Every row names a registered architecture (raises ValueError naming the first that does not)."""
    for key in table:
        _check_architecture(key.split(".", 1)[0], f"pretrained weights table (row {key!r})")
