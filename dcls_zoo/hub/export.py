"""Exporting a model to a Hugging Face Hub folder: :func:`save_pretrained`.

An export directory holds exactly what ``timm.create_model("hf-hub:...")`` and
``timm.create_model("local-dir:...", pretrained=True)`` read, and no pickle:

- ``config.json``: timm's format (written by timm's own ``save_config_for_hf``): ``architecture``
  (the registered name), ``num_classes``, ``model_args`` (the arguments the model was built with),
  ``label_names`` when known, ``pretrained_cfg`` with the data config (input size, mean, std, crop,
  interpolation: the evaluation transform the model was tested with), and ``dcls_zoo`` with the
  sha256 and size of the weights file (verified by dcls-zoo's loaders) and the metrics;
- ``model.safetensors``: ``model.state_dict()`` (each stage's shared positions once) with provenance
  in the safetensors metadata (dcls-zoo, torch and timm versions, architecture, DCLS settings),
  written atomically;
- ``README.md``: a model card (:mod:`dcls_zoo.hub.card`);
- ``positions.png``: the learned positions, one panel per position group (2D positions only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..state_dicts import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointMismatchError,
    atomic_path,
    check_state_dict,
    save_safetensors,
)
from ..version import __version__
from ..weights.build import MANIFEST_KEY, export_manifest
from .card import CARD_KEYS, CARD_NAME, POSITIONS_NAME, dcls_settings, render_card, save_positions_figure

__all__ = ["PICKLE_SUFFIXES", "architecture_of", "save_pretrained"]

# Files an export must never carry: anything torch.load would unpickle.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")


def architecture_of(model: nn.Module) -> str:
    """The registered architecture ``config.json`` will name (``model.pretrained_cfg['architecture']``).

    Raises:
        ValueError: none recorded, or not registered in timm.
    """
    import timm

    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if not architecture:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']: build it with "
            "dcls_zoo.create_model(name, ...) (or timm.create_model) so config.json can name a registered "
            "architecture to rebuild"
        )
    if not timm.is_model(architecture):
        raise ValueError(f"architecture {architecture!r} is not registered in timm; it could not be rebuilt")
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


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    model_card: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    model_args: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    check: bool = True,
) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``README.md`` and ``positions.png`` to ``directory``.

    ``timm.create_model("local-dir:<directory>", pretrained=True)`` (after ``import dcls_zoo``) and
    ``dcls_zoo.create_model("local-dir:<directory>", pretrained=True)`` rebuild the same model
    from it; pushed to the Hub, ``hf-hub:<repo_id>`` does the same.

    Args:
        model: a model built by ``dcls_zoo.create_model`` / ``timm.create_model`` (its
            ``pretrained_cfg['architecture']`` and recorded ``_model_args`` go to ``config.json``).
        directory: created if needed; our four files are overwritten, other files are left alone.
        model_card: optional card content, keys: ``model_name``, ``description``, ``dataset``,
            ``metrics``, ``training``, ``license``, ``tags``, ``citation``.
        label_names: one name per class (default: ``model.pretrained_cfg['label_names']`` when it
            matches ``num_classes``).
        data_config: preprocessing for the export (``input_size``, ``mean``, ``std``,
            ``crop_pct``, ``interpolation``, ...), as timm's ``save_for_hf``.
        model_args: extra or replacement constructor arguments for ``config.json``.
        repo_id: the Hub repo the card's usage snippet names (default: a ``local-dir:`` snippet).
        check: rebuild the architecture from the written arguments (on the meta device) and
            check that its state-dict keys and shapes match the model's.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: no registered architecture, a model that its config cannot rebuild, label
            names of the wrong length, unknown ``model_card`` keys.
    """
    import timm
    from timm.models._hub import get_model_args, save_config_for_hf

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
    metadata = {
        "format": "pt",
        "architecture": architecture,
        "model_args": json.dumps({k: _json_or_none(v) for k, v in rebuild_args.items()}, sort_keys=True),
        "dcls_zoo_version": __version__,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "dcls_settings": json.dumps(settings, sort_keys=True),
        "created_by": "dcls_zoo.save_pretrained",
    }
    # The weights first: config.json records their sha256.
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, metadata)

    manifest = {"version": __version__, **export_manifest(directory)}
    metrics = card.get("metrics")
    if metrics:
        manifest["metrics"] = {str(k): _json_or_none(v) for k, v in dict(metrics).items()}
    model_config: dict[str, Any] = {MANIFEST_KEY: manifest}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    with atomic_path(directory / CONFIG_NAME) as temporary:
        save_config_for_hf(
            model,
            temporary,
            model_config=model_config,
            model_args=dict(model_args or {}),
            data_config=dict(data_config) if data_config else None,
        )

    picture = save_positions_figure(model, directory / POSITIONS_NAME)
    config = json.loads((directory / CONFIG_NAME).read_text())
    card_text = render_card(model, config, settings, card, picture is not None, repo_id, directory)
    with atomic_path(directory / CARD_NAME) as temporary:
        temporary.write_text(card_text, encoding="utf-8")
    return directory
