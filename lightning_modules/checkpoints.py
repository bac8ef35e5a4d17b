"""Weights in and out of Lightning checkpoints: the one place that reads a ``.ckpt`` into a model.

Used by ``dcls-zoo push`` / ``dcls-zoo export`` (checkpoint -> model -> Hub export) and by
``ImageClassifier(pretrained=...)`` (fine-tuning from a checkpoint, an export directory, a Hub
repo or a registered tag).

Which weights of a checkpoint:

- ``state_dict`` entries under the LightningModule attribute holding the model: the prefix is
  given, or detected among ``model.``, ``net.``, ``module.`` (other entries are ignored);
- EMA: Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` callback saves the **averaged**
  weights as ``state_dict`` and the raw ones as ``current_model_state`` (with ``averaging_state``);
  a hand-written checkpoint may instead carry ``state_dict_ema`` or ``ema_state_dict`` next to a raw
  ``state_dict``. By default the EMA weights are used when present.
- the architecture: given, else ``checkpoint["hyper_parameters"]["arch"]``; extra model arguments
  from ``hyper_parameters["model_kwargs"]`` and ``in_chans``; the class count given, from
  ``hyper_parameters["num_classes"]`` or from the classifier weight's rows.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "EMA_KEYS",
    "PREFIXES",
    "load_checkpoint",
    "load_pretrained_weights",
    "model_from_checkpoint",
    "select_weights",
    "strip_prefix",
]

log = logging.getLogger(__name__)

PREFIXES = ("model.", "net.", "module.")
EMA_KEYS = ("state_dict_ema", "ema_state_dict")


def load_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """``torch.load(path, weights_only=True)``, or a ValueError saying why it was refused."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"refusing to load {path}: it holds objects that torch.load(weights_only=True) will not unpickle "
            f"({reason}). Only tensors and plain containers are read; re-save the checkpoint without them "
            "(e.g. torch.save({'state_dict': ..., 'hyper_parameters': {'arch': ...}})) or export from the "
            "training process with dcls_zoo.save_pretrained"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot read {path} as a torch checkpoint: {error}") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"{path} is not a Lightning checkpoint: expected a dict with a 'state_dict' entry")
    return checkpoint


def select_weights(checkpoint: Mapping[str, Any], ema: bool | None = None) -> tuple[Mapping[str, Any], str]:
    """The state dict to use and where it came from: EMA weights when present (``ema=None``),
    required (``ema=True``) or never (``ema=False``)."""
    raw, averaged, where = checkpoint["state_dict"], None, ""
    if isinstance(checkpoint.get("current_model_state"), Mapping):
        raw, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
        where = "Lightning WeightAveraging (state_dict; raw weights in current_model_state)"
    else:
        for key in EMA_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                averaged, where = checkpoint[key], key
                break
    if ema is False or (ema is None and averaged is None):
        source = "current_model_state" if averaged is not None and "current_model_state" in checkpoint else "state_dict"
        return raw, f"raw weights ({source})"
    if averaged is None:
        raise ValueError(
            "--ema: the checkpoint has no EMA weights (no WeightAveraging current_model_state, "
            f"no {' / '.join(EMA_KEYS)}); use --no-ema"
        )
    return averaged, f"EMA weights from {where}"


def strip_prefix(state: Mapping[str, Any], prefix: str | None = None) -> tuple[dict[str, Any], str, int]:
    """Keys under ``prefix`` (detected when None) without it; also the prefix and the count ignored."""
    if prefix is None:
        counts = {p: sum(k.startswith(p) for k in state) for p in PREFIXES}
        best = max(counts, key=counts.get)
        prefix = best if counts[best] else ""
    kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not kept:
        raise ValueError(f"no state_dict entry starts with {prefix!r}; pass --prefix")
    return kept, prefix, len(state) - len(kept)


def _hyper_parameters(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams if isinstance(hparams, Mapping) else {}


def model_from_checkpoint(
    checkpoint: Mapping[str, Any],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    ema: bool | None = None,
    prefix: str | None = None,
) -> tuple[nn.Module, str]:
    """Build the checkpoint's architecture and load the selected weights strictly.

    Returns:
        ``(model in eval mode, a one-line description of the weights read)``.
    """
    import timm

    import dcls_zoo
    from dcls_zoo.convert import load_checkpoint_strict

    hparams = _hyper_parameters(checkpoint)
    arch = arch or hparams.get("arch")
    if not arch:
        raise ValueError("the checkpoint names no architecture (hyper_parameters['arch']); pass --arch")
    state, description = select_weights(checkpoint, ema)
    state, prefix, ignored = strip_prefix(state, prefix)
    kwargs = dict(hparams.get("model_kwargs") or {}) if isinstance(hparams.get("model_kwargs"), Mapping) else {}
    if hparams.get("in_chans") is not None:
        kwargs["in_chans"] = int(hparams["in_chans"])
    num_classes = num_classes or hparams.get("num_classes")
    if num_classes is None:
        classifier = timm.models.get_pretrained_cfg(arch.split(".", 1)[0])
        head = state.get(f"{classifier.classifier}.weight") if classifier and classifier.classifier else None
        num_classes = head.shape[0] if head is not None else None
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    model = dcls_zoo.create_model(arch, **kwargs)
    try:
        load_checkpoint_strict(model, state, what=f"the checkpoint's {description}")
    except ValueError as error:
        raise ValueError(f"{error} (arch {arch}, {kwargs})") from error
    notes = f"{description}, prefix {prefix!r}" + (f", {ignored} other entries ignored" if ignored else "")
    return model.eval(), notes


# --------------------------------------------------------------------------------------------
# fine-tuning: weights from anywhere into a freshly built model


def _source_state_dict(source: str, arch: str) -> tuple[dict[str, Tensor], str]:
    import dcls_zoo

    path = Path(source).expanduser()
    if source.endswith(".ckpt") or path.is_file():
        state, description = select_weights(load_checkpoint(path))
        state, _, _ = strip_prefix(state)
        return dict(state), f"{path} ({description})"
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"pretrained={source!r}: {path} has no model.safetensors (an export directory holds one)")
        from safetensors.torch import load_file

        return load_file(weights), f"export {path}"
    if source.startswith(("hf-hub:", "hf_hub:")):
        model = dcls_zoo.create_model(source, pretrained=True)
    elif "/" in source or os.sep in source:
        raise ValueError(f"pretrained={source!r}: no such file or directory")
    else:
        model = dcls_zoo.create_model(arch, pretrained=source)
    return model.state_dict(), source


def _adapt(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Fit the input conv and the classifier of ``state`` to ``model``; returns what was changed."""
    from timm.models import adapt_input_conv

    changes: list[str] = []
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first_conv = cfg.get("first_conv")
    key = f"{first_conv}.weight" if first_conv else None
    if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
        state[key] = adapt_input_conv(own[key].shape[1], state[key])
        changes.append(f"input conv {first_conv} adapted to {own[key].shape[1]} channels")
    classifier = cfg.get("classifier")
    for suffix in ("weight", "bias"):
        key = f"{classifier}.{suffix}"
        if classifier and key in state and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
            if suffix == "weight":
                changes.append(f"new classifier {classifier} for {own[key].shape[0]} classes")
    return changes


def load_pretrained_weights(model: nn.Module, source: str, arch: str) -> str:
    """Load weights for fine-tuning into ``model`` (built with the target class count).

    Args:
        model: the freshly built network.
        source: a Lightning ``.ckpt`` (EMA weights when present), an export directory
            (``model.safetensors``), an ``hf-hub:org/name`` id, or a pretrained tag of ``arch``
            (``"in1k"``).
        arch: the architecture name (for tags).

    Returns:
        A description of what was loaded (and which layers were replaced: a classifier of another
        class count starts fresh, an input conv of another channel count is adapted as timm does).

    Raises:
        ValueError: an unreadable source, or weights that do not fit the architecture (naming the
            missing, unexpected and mismatched keys).
    """
    from dcls_zoo.convert import load_checkpoint_strict

    state, description = _source_state_dict(source, arch)
    changes = _adapt(model, state)
    load_checkpoint_strict(model, state, what=f"pretrained weights {description}")
    return description + (f"; {', '.join(changes)}" if changes else "")
