"""Models from export sources: ``local-dir:DIR`` and ``hf-hub:org/repo[@revision]`` names, verified.

The config is read first (a non-JSON ``config.json`` is named), the weight files' sha256 recorded
by :func:`dcls_zoo.save_pretrained` are verified, ``config.json`` is checked against the config
record its weights file carries (:mod:`dcls_zoo.export_format`), then timm builds the model from
the verified files. ``timm.create_model("hf-hub:...")`` called directly skips these checks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
from torch import nn

from ..export_format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_config_matches_weights,
    check_label_names,
    read_export_config,
    recorded_files,
    verify_export,
)
from ..names import SOURCE_PREFIXES
from ..state_dicts import verify_sha256
from .hub_files import hub_file
from .network import hub_download_errors

__all__ = ["create_from_source", "source_config", "split_source"]

_logger = logging.getLogger(__name__)


def split_source(name: str) -> tuple[str, str]:
    """``("local-dir:" | "hf-hub:", the rest)`` of a source name (``hf_hub:`` spelled ``hf-hub:``)."""
    for prefix in SOURCE_PREFIXES:
        if name.startswith(prefix):
            return prefix.replace("_", "-"), name[len(prefix) :]
    raise ValueError(f"{name!r} names no source (expected one of {', '.join(SOURCE_PREFIXES)})")


def source_config(name: str, cache_dir: str | None = None) -> dict[str, Any]:
    """The ``config.json`` of a ``local-dir:DIR`` or ``hf-hub:org/repo[@revision]`` source, read and
    its values checked (:func:`dcls_zoo.export_format.read_export_config`); only the config is
    fetched. What the source records decides the model it rebuilds: ``architecture`` and
    ``model_args``.

    Raises:
        FileNotFoundError: no such export directory.
        WeightsFileError: an unreadable or hostile config (naming the file and field).
        HubUnreachableError / NotOnHubError: as :func:`create_from_source`.
    """
    kind, target = split_source(name)
    if kind == "local-dir:":
        directory = Path(target).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"{name!r}: {directory} is not a directory (an export directory from save_pretrained)")
        return read_export_config(directory, name)
    repo_id, _, revision = target.partition("@")
    with hub_download_errors(name):
        found = hub_file(repo_id, CONFIG_NAME, revision=revision or None, cache_dir=cache_dir, what=name)
    return read_export_config(found.path, name)


def create_from_source(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for ``local-dir:DIR`` and ``hf-hub:org/repo[@revision]`` names, after
    reading and verifying the export (see the module docstring).

    For ``hf-hub:`` the files are fetched once (under the network deadline and with its advice
    on failure) at one commit, and timm then builds from that commit's cached files.

    Raises:
        WeightsFileError / ChecksumMismatchError: a broken or tampered export (naming the file).
        ExportMismatchError: a config.json edited after export (naming the field and both values).
        HubUnreachableError: no Hub and no cached copy.
        NotOnHubError: no such repo or file.
    """
    kind, target = split_source(name)
    if kind == "local-dir:":
        directory = Path(target).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"{name!r}: {directory} is not a directory (an export directory from save_pretrained)")
        config = read_export_config(directory, name)
        if pretrained:
            verify_export(directory, config, name)
        else:
            check_label_names(config, name)
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    repo_id, _, revision = target.partition("@")
    cache_dir = kwargs.get("cache_dir")
    with hub_download_errors(name):
        config_file = hub_file(repo_id, CONFIG_NAME, revision=revision or None, cache_dir=cache_dir, what=name)
        config = read_export_config(config_file.path, name)
        commit = config_file.commit or revision or None
        if pretrained:
            recorded = recorded_files(config, name)
            weights = None
            for filename in recorded or {WEIGHTS_NAME: None}:
                found = hub_file(repo_id, filename, revision=commit, cache_dir=cache_dir, what=name)
                if filename in recorded:
                    verify_sha256(found.path, recorded[filename], f"{name}: {filename}")
                if filename == WEIGHTS_NAME:
                    weights = found.path
            if not recorded:
                _logger.info("%s: no checksums recorded (not pushed by dcls-zoo); %s not verified", name, WEIGHTS_NAME)
            if weights is not None:  # also checks that the file is whole
                check_config_matches_weights(config, weights, name)
        check_label_names(config, name)
        pinned = f"hf-hub:{repo_id}@{commit}" if commit else name
        return timm.create_model(pinned, pretrained=pretrained, **kwargs)


