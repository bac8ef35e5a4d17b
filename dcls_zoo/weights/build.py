"""Building a model with pretrained weights: which file, fetched how, read how.

The registered builders (:mod:`dcls_zoo.models.convnext_dcls`, :mod:`dcls_zoo.models.resnet_dcls`)
build through :func:`build_model_with_weights`, so ``timm.create_model``,
:func:`dcls_zoo.create_model` and the ``torch.hub`` entry points all resolve ``pretrained=True``
here, from the weights table (:mod:`dcls_zoo.weights.table`):

1. **The Hub repo** (``huggingface_hub``: its cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, the
   pinned revision), safetensors only. It wins whenever it answers.
2. **The fallback**, when the Hub answers that the repo or the file does not exist (a pinned
   revision that does not exist is an error instead): the authors' released file, downloaded into
   ``<torch.hub.get_dir()>/checkpoints`` (or ``cache_dir``) with a progress bar, read with
   ``weights_only=True`` and converted by :mod:`dcls_zoo.weights.official`.
   ``DCLS_ZOO_ZENODO_URL`` points the fallback at a mirror of the authors' files.
3. **Offline or unreachable Hub** (``HF_HUB_OFFLINE=1``, no connection, a server silent for
   ``DCLS_ZOO_HUB_TIMEOUT`` seconds): the Hub file from the Hugging Face cache; else a fallback
   file already in the download cache; else an error naming the caches and the ways out.

A row's ``sha256`` (and ``fallback_sha256``), when given, is enforced on every load.

Explicit sources from the caller's code still work as in timm: ``pretrained_cfg_overlay=dict(url=...)``
loads only that URL (unchecked: no recorded checksum; its file name is confined to the download
cache); ``dict(hf_hub_id="org/repo@revision")`` (or ``create_model(..., revision=...)``) loads only
that Hub revision; ``dict(file=...)``/``dict(state_dict=...)`` are left to timm.

**Exports** (``local-dir:DIR`` and ``hf-hub:org/repo`` names, :func:`create_from_source`): the
config is read here first (a non-JSON ``config.json`` is named), the weight files' sha256 recorded
by :func:`dcls_zoo.save_pretrained` are verified, and the safetensors file is checked to be whole;
then timm builds the model from the verified files. ``timm.create_model("hf-hub:...")`` called
directly skips these checks.

**Rebuilding from saved weights never downloads**: :func:`without_weight_sources` drops the
arguments that would fetch weights (``pretrained``, ``pretrained_cfg``, ``pretrained_cfg_overlay``,
``checkpoint_path``, ``cache_dir``) from a checkpoint's model arguments, with a log line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from torch import Tensor, nn

from ..names import SOURCE_PREFIXES, check_model_name
from ..state_dicts import CONFIG_NAME, WEIGHTS_NAME, WeightsFileError, load_torch_file, read_safetensors, sha256_file
from .fetch import (
    HubUnreachableError,
    NotOnHubError,
    PretrainedWeightsError,
    confined_path,
    download_dir,
    hf_cache_dir,
    hub_download_errors,
    hub_file,
    hub_unreachable_error,
    offline,
    url_file,
    url_file_name,
    verify_sha256,
    WeightsReadError,
)
from .official import convert_official_checkpoint
from .table import DEFAULT_FILENAME, PRETRAINED_WEIGHTS, get_pretrained_weights, hub_id_at_revision

__all__ = [
    "MANIFEST_KEY",
    "WEIGHT_SOURCE_ARGUMENTS",
    "ZENODO_URL_ENV",
    "WeightsFile",
    "build_model_with_weights",
    "create_from_source",
    "export_manifest",
    "export_state_dict",
    "fetch_pretrained",
    "load_pretrained_state_dict",
    "read_export_config",
    "verify_export",
    "without_weight_sources",
]

_logger = logging.getLogger(__name__)

#: Environment variable: base URL of a mirror of the authors' Zenodo files (the file name is
#: appended), used instead of zenodo.org for the fallback. The table's checksums still apply.
ZENODO_URL_ENV = "DCLS_ZOO_ZENODO_URL"
#: The ``config.json`` entry in which :func:`dcls_zoo.save_pretrained` records its files' sha256.
MANIFEST_KEY = "dcls_zoo"
#: ``create_model`` arguments that fetch or read weights from somewhere.
WEIGHT_SOURCE_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def _available() -> str:
    return ", ".join(sorted(PRETRAINED_WEIGHTS)) or "none"


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
    explicit: bool = False  # given by the caller (pretrained_cfg_overlay), not the weights table

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
    return base.rstrip("/") + "/" + url_file_name(url)


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
            sources.append(_UrlSource(explicit_url, sha, explicit=sha is None))
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


def _fetch(sources: list[_Source], what: str, cache_dir: str | os.PathLike[str] | None, progress: bool) -> WeightsFile:
    not_found: list[str] = []
    for index, source in enumerate(sources):
        if isinstance(source, _HubSource):
            try:
                found = hub_file(source.repo_id, source.filename, revision=source.revision, cache_dir=cache_dir, what=what)
            except NotOnHubError as error:
                _logger.info("%s: %s not found (%s); trying the next source", what, source, error)
                not_found.append(f"{source} (not found)")
                continue
            except HubUnreachableError as error:
                fallbacks = [s for s in sources[index + 1 :] if isinstance(s, _UrlSource)]
                for fallback in fallbacks:
                    cached = url_file(fallback.url, cache_dir=cache_dir, allow_download=False)
                    if cached is not None:
                        _logger.info("%s: the Hub is not reachable; using the cached %s", what, cached)
                        verify_sha256(cached, fallback.sha256, str(fallback))
                        return _weights_file(cached, fallback)
                if not fallbacks:
                    raise
                raise hub_unreachable_error(
                    what, error.__cause__ or error, cache_dir=cache_dir, fallback_urls=[f.url for f in fallbacks]
                ) from error.__cause__
            verify_sha256(found.path, source.sha256, str(source))
            hub_id = source.repo_id + (f"@{source.revision}" if source.revision else "")
            return WeightsFile(found.path, str(source), "safetensors", hf_hub_id=hub_id)
        if source.explicit:
            _logger.warning("%s: %s has no recorded sha256; it is loaded unchecked", what, source.url)
        path = url_file(source.url, cache_dir=cache_dir, progress=progress)
        assert path is not None
        verify_sha256(path, source.sha256, str(source))
        return _weights_file(path, source)
    if not sources:
        raise PretrainedWeightsError(f"No pretrained weights exist for {what}; weights exist for: {_available()}")
    raise PretrainedWeightsError(
        f"No pretrained weights found for {what}: {'; '.join(not_found)}, and no fallback is configured"
    )


def _weights_file(path: Path, source: _UrlSource) -> WeightsFile:
    fmt: Literal["safetensors", "torch"] = "safetensors" if path.name.endswith(".safetensors") else "torch"
    return WeightsFile(path, source.url, fmt, url=source.url)


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
    what = f"the weights file from {weights.source}"
    try:
        if weights.format == "safetensors":
            state = read_safetensors(weights.path, what=what)
        else:
            state = load_torch_file(weights.path, what=what)  # weights_only=True: refuses anything but tensors
    except WeightsFileError as error:
        if weights.url is not None:  # our download cache: never keep a file that cannot be read
            weights.path.unlink(missing_ok=True)
            raise WeightsReadError(f"{error}; it was removed from the download cache") from error
        raise WeightsReadError(f"{error}: delete it to download it again") from error
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
            check_model_name(arch, "architecture", "pretrained config")
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


# --------------------------------------------------------------------------------------------
# exports: local-dir: and hf-hub: sources, verified


def export_manifest(directory: str | os.PathLike[str], names: tuple[str, ...] = (WEIGHTS_NAME,)) -> dict[str, Any]:
    """The ``config.json`` entry that records the export's weight files: ``{"files": {name: {"sha256", "size"}}}``."""
    directory = Path(directory)
    return {"files": {name: {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size} for name in names}}


def read_export_config(path: str | os.PathLike[str], what: str | None = None) -> dict[str, Any]:
    """An export's ``config.json`` (``path`` is the file or its directory), as a dict.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: not JSON, or not a JSON object with an ``architecture`` (naming the file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    what = what or os.fspath(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no {CONFIG_NAME} ({path} does not exist); an export directory holds one")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsFileError(f"{what}: {path} is not valid JSON ({error}); export the model again") from error
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise WeightsFileError(f"{what}: {path} is not a timm model config (no 'architecture' string)")
    _check_config_values(config, path, what)
    return config


#: The most classes a config may ask for (a classifier of 1M classes is already a 1 GB matrix).
_MAX_CLASSES = 1_000_000


def _check_config_values(config: Mapping[str, Any], path: Path, what: str) -> None:
    """Refuse a config whose values would make the model build do something else than build it."""
    try:
        check_model_name(config["architecture"], "architecture", f"{what}'s config.json")
    except ValueError as error:
        raise WeightsFileError(str(error)) from error
    model_args = config.get("model_args", {})
    if not isinstance(model_args, Mapping):
        raise WeightsFileError(f"{what}: {path}'s model_args is a {type(model_args).__name__}, not a mapping")
    sources = sorted(set(model_args) & set(WEIGHT_SOURCE_ARGUMENTS))
    if sources:
        raise WeightsFileError(
            f"{what}: {path}'s model_args name weight sources ({', '.join(sources)}); an export holds its weights "
            "itself and is never loaded with them. Remove them (or export the model again)"
        )
    for key, value in (("num_classes", config.get("num_classes")), ("model_args.num_classes", model_args.get("num_classes"))):
        if value is not None and not (isinstance(value, int) and 0 <= value <= _MAX_CLASSES):
            raise WeightsFileError(f"{what}: {path}'s {key} is {value!r}; expected an integer in [0, {_MAX_CLASSES:,}]")


def _recorded_files(config: Mapping[str, Any], what: str) -> dict[str, str]:
    if MANIFEST_KEY not in config:
        return {}  # not exported by dcls-zoo (e.g. timm's own save_for_hf)
    manifest = config[MANIFEST_KEY]
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        raise WeightsFileError(
            f"{what}: config.json's {MANIFEST_KEY!r} entry records no weight files ({MANIFEST_KEY}.files); it was "
            "edited after export. Export the model again"
        )
    recorded = {}
    for name, entry in files.items():
        sha = entry.get("sha256") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not isinstance(sha, str):
            raise WeightsFileError(f"{what}: config.json's {MANIFEST_KEY}.files entry {name!r} has no sha256 string")
        recorded[name] = sha
    return recorded


def verify_export(directory: str | os.PathLike[str], config: Mapping[str, Any], what: str) -> bool:
    """Check the weight files of an export against the sha256 its ``config.json`` records, and
    that its safetensors file is whole.

    Returns:
        True when checksums were recorded and match; False for an export without them (written by
        timm or an older dcls-zoo: logged, the file is still checked to be readable).

    Raises:
        ChecksumMismatchError: a file whose sha256 differs (tampered, truncated, replaced).
        UnsafeFileNameError: a recorded name that is not a plain file name.
        WeightsFileError: a missing, truncated or garbled weights file.
    """
    directory = Path(directory)
    recorded = _recorded_files(config, what)
    for name, sha in recorded.items():
        path = confined_path(directory, name, f"{what}'s config.json")
        if not path.is_file():
            raise WeightsFileError(f"{what}: {path} is missing (config.json records it)")
        verify_sha256(path, sha, f"{what}: {name}", advice="Export the model again (or restore the original file).")
    weights = directory / WEIGHTS_NAME
    if WEIGHTS_NAME not in recorded:
        _logger.warning("%s: no checksum recorded for %s (not exported by dcls-zoo); not verified", what, WEIGHTS_NAME)
        _check_safetensors_whole(weights, what)
    return bool(recorded)


def _check_safetensors_whole(path: Path, what: str) -> None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise WeightsFileError(f"{what}: no {WEIGHTS_NAME} ({path} does not exist)")
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            file.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFileError(
            f"{what}: {path} ({path.stat().st_size:,} bytes) is truncated or not a safetensors file ({error}); "
            "download or export it again"
        ) from error


def export_state_dict(directory: str | os.PathLike[str]) -> tuple[dict[str, Tensor], str]:
    """The verified state dict of an export directory, and a phrase describing it.

    Raises:
        as :func:`read_export_config` and :func:`verify_export`.
    """
    directory = Path(directory)
    what = f"export {directory}"
    config = read_export_config(directory, what)
    checked = verify_export(directory, config, what)
    state = read_safetensors(directory / WEIGHTS_NAME, what=f"{what}: {WEIGHTS_NAME}")
    return state, what + (" (sha256-verified)" if checked else " (no checksums recorded)")


def _split_source(name: str) -> tuple[str, str]:
    for prefix in SOURCE_PREFIXES:
        if name.startswith(prefix):
            return prefix.replace("_", "-"), name[len(prefix) :]
    raise ValueError(f"{name!r} names no source (expected one of {', '.join(SOURCE_PREFIXES)})")


def create_from_source(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for ``local-dir:DIR`` and ``hf-hub:org/repo[@revision]`` names, after
    reading and verifying the export (see the module docstring).

    For ``hf-hub:`` the files are fetched once (under the network deadline and with its advice
    on failure) at one commit, and timm then builds from that commit's cached files.

    Raises:
        WeightsFileError / ChecksumMismatchError: a broken or tampered export (naming the file).
        HubUnreachableError: no Hub and no cached copy.
        NotOnHubError: no such repo or file.
    """
    kind, target = _split_source(name)
    if kind == "local-dir:":
        directory = Path(target).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"{name!r}: {directory} is not a directory (an export directory from save_pretrained)")
        config = read_export_config(directory, name)
        if pretrained:
            verify_export(directory, config, name)
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    repo_id, _, revision = target.partition("@")
    cache_dir = kwargs.get("cache_dir")
    with hub_download_errors(name):
        config_file = hub_file(repo_id, CONFIG_NAME, revision=revision or None, cache_dir=cache_dir, what=name)
        config = read_export_config(config_file.path, name)
        commit = config_file.commit or revision or None
        if pretrained:
            recorded = _recorded_files(config, name)
            for filename in recorded or {WEIGHTS_NAME: None}:
                found = hub_file(repo_id, filename, revision=commit, cache_dir=cache_dir, what=name)
                if filename in recorded:
                    verify_sha256(found.path, recorded[filename], f"{name}: {filename}")
            if not recorded:
                _logger.info("%s: no checksums recorded (not pushed by dcls-zoo); %s not verified", name, WEIGHTS_NAME)
                _check_safetensors_whole(found.path, name)
        pinned = f"hf-hub:{repo_id}@{commit}" if commit else name
        return timm.create_model(pinned, pretrained=pretrained, **kwargs)


# --------------------------------------------------------------------------------------------
# rebuilding from saved weights


def without_weight_sources(model_kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``model_kwargs`` without the arguments that fetch or read weights (:data:`WEIGHT_SOURCE_ARGUMENTS`).

    A model rebuilt to receive saved weights takes them from the saved file, so such arguments
    from a checkpoint are dropped (logged as a warning naming them and ``what``), never followed.
    """
    dropped = sorted(key for key in model_kwargs if key in WEIGHT_SOURCE_ARGUMENTS)
    if dropped:
        _logger.warning(
            "%s: ignoring the model arguments %s: a model rebuilt from saved weights takes them from the file "
            "and downloads nothing",
            what,
            ", ".join(dropped),
        )
    return {key: value for key, value in model_kwargs.items() if key not in WEIGHT_SOURCE_ARGUMENTS}
