"""Exporting a model to a Hugging Face Hub folder: :func:`save_pretrained`.

What the folder holds and how each file is written and checked is :mod:`dcls_zoo.export_format`;
this module gathers the model's side (its architecture and arguments, checked by rebuilding it, its
DCLS settings, the card and the positions picture) and writes the files: the weights first (the
config records their sha256), each atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointMismatchError
from ..export_format import (
    CARD_NAME,
    CONFIG_NAME,
    MANIFEST_KEY,
    POSITIONS_NAME,
    WEIGHTS_NAME,
    manifest,
    provenance,
    timm_config,
    weights_metadata,
)
from ..figures import plot_position_scatter, save_png
from ..names import check_model_name
from ..state_dicts import atomic_path, check_state_dict, save_safetensors
from .card import CARD_KEYS, dcls_settings, render_card

__all__ = ["architecture_of", "save_pretrained"]


def architecture_of(model: nn.Module) -> str:
    """The registered architecture ``config.json`` will name (``model.pretrained_cfg['architecture']``).

    Raises:
        ValueError: none recorded, or not registered in timm.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if not architecture:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']: build it with "
            "dcls_zoo.create_model(name, ...) (or timm.create_model) so config.json can name a registered "
            "architecture to rebuild"
        )
    check_model_name(architecture, "architecture", "model's pretrained_cfg")
    return architecture


def _check_rebuild(model: nn.Module, architecture: str, model_args: Mapping[str, Any]) -> None:
    """Build ``architecture(**model_args)`` (on the meta device) and check that the model's state
    dict has its keys and shapes (:func:`dcls_zoo.state_dicts.check_state_dict`)."""
    import timm

    try:
        with torch.device("meta"):
            fresh = timm.create_model(architecture, pretrained=False, **model_args)
    except Exception:  # an init that needs real storage: build it for real
        fresh = timm.create_model(architecture, pretrained=False, **model_args)
    rebuilt = f"{architecture}({', '.join(f'{k}={v!r}' for k, v in model_args.items())})"
    try:
        check_state_dict(fresh, model.state_dict(), what=f"this model's state dict, against config.json's {rebuilt},")
    except CheckpointMismatchError as error:
        raise ValueError(
            f"{error}. Was the model changed after create_model (e.g. dclsify on a plain architecture)? Pass "
            "model_args=... with the missing arguments, or register the modified architecture."
        ) from error


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    model_card: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    model_args: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    source: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``README.md`` and ``positions.png`` to ``directory``.

    ``timm.create_model("local-dir:<directory>", pretrained=True)`` (after ``import dcls_zoo``) and
    ``dcls_zoo.create_model("local-dir:<directory>", pretrained=True)`` rebuild the same model
    from it; pushed to the Hub, ``hf-hub:<repo_id>`` does the same. The same model and arguments
    give byte-identical ``config.json`` and ``model.safetensors``.

    Args:
        model: a model built by ``dcls_zoo.create_model`` / ``timm.create_model`` (its
            ``pretrained_cfg['architecture']`` and recorded ``_model_args`` go to ``config.json``).
        directory: created if needed; our four files are overwritten, other files are left alone.
        model_card: optional card content, keys: ``model_name``, ``description``, ``dataset``,
            ``metrics``, ``training``, ``limitations``, ``license``, ``tags``, ``citation``.
        label_names: one name per class (default: ``model.pretrained_cfg['label_names']`` when it
            matches ``num_classes``).
        data_config: preprocessing for the export (``input_size``, ``mean``, ``std``,
            ``crop_pct``, ``interpolation``, ...), as timm's ``save_for_hf``.
        model_args: extra or replacement constructor arguments for ``config.json``.
        repo_id: the Hub repo the card's usage snippet names (default: a ``local-dir:`` snippet).
        source: where the weights came from, recorded in the weights' provenance
            (:func:`dcls_zoo.export_format.provenance`), e.g. the checkpoint a run wrote.
        check: rebuild the architecture from the written arguments (on the meta device) and
            check that its state-dict keys and shapes match the model's.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: no registered architecture, a model that its config cannot rebuild, label
            names of the wrong length, unknown ``model_card`` keys.
    """
    from timm.models import get_model_args

    card = dict(model_card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model_card keys {unknown}; known: {', '.join(CARD_KEYS)}")
    architecture = architecture_of(model)
    num_classes = getattr(model, "num_classes", None)
    if label_names is None:
        known = (model.pretrained_cfg or {}).get("label_names")
        label_names = known if known is not None and len(known) == num_classes else None
    elif num_classes is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label_names for a model with num_classes={num_classes}")
    rebuild_args = get_model_args(model, dict(model_args or {}))
    if check:
        _check_rebuild(model, architecture, rebuild_args)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = dcls_settings(model)
    config = timm_config(model, model_args=model_args, data_config=data_config, label_names=label_names)
    # The weights first, carrying the config they belong to: config.json records their sha256.
    record = provenance(architecture, rebuild_args, dcls_settings=settings, source=source)
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, weights_metadata(record, config))
    config[MANIFEST_KEY] = manifest(directory, metrics=card.get("metrics"))
    with atomic_path(directory / CONFIG_NAME) as temporary:
        temporary.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    figure = plot_position_scatter(model)
    if figure is not None:
        with atomic_path(directory / POSITIONS_NAME) as temporary:
            save_png(figure, temporary)
    card_text = render_card(model, config, settings, card, figure is not None, repo_id, directory)
    with atomic_path(directory / CARD_NAME) as temporary:
        temporary.write_text(card_text, encoding="utf-8")
    return directory
