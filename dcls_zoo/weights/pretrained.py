"""Pretrained weights: which file, fetched how, read how, and a model built with them.

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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from torch import Tensor, nn

from ..errors import HubUnreachableError, NotOnHubError, PretrainedWeightsError, WeightsFileError, WeightsReadError
from ..names import check_model_name
from ..state_dicts import load_torch_file, read_safetensors, verify_sha256
from .hub_files import hub_file
from .network import hub_unreachable_error
from .official import convert_official_checkpoint
from .table import DEFAULT_FILENAME, PRETRAINED_WEIGHTS, get_pretrained_weights, hub_id_at_revision
from .url_files import url_file, url_file_name

__all__ = [
    "ZENODO_URL_ENV",
    "WeightsFile",
    "build_model_with_weights",
    "fetch_pretrained",
    "load_pretrained_state_dict",
]

_logger = logging.getLogger(__name__)

#: Environment variable: base URL of a mirror of the authors' Zenodo files (the file name is
#: appended), used instead of zenodo.org for the fallback. The table's checksums still apply.
ZENODO_URL_ENV = "DCLS_ZOO_ZENODO_URL"


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
    ``ValueError``) and converted by :func:`dcls_zoo.weights.official.convert_official_checkpoint`.
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


