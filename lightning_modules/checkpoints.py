"""Weights in and out of Lightning checkpoints: the one place that reads a ``.ckpt`` into a model.

Used by ``dcls-zoo push`` / ``dcls-zoo export`` and the after-fit export (:func:`export_checkpoint`:
checkpoint -> model -> Hub export) and by
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

Reading, selecting and cleaning are :mod:`dcls_zoo.state_dicts`'s; this module adds what is
Lightning's: hyper-parameters, and the :data:`EXPORT_KEY` entry (labels, preprocessing, metrics).
Rebuilding from a checkpoint never downloads (see :func:`model_from_checkpoint`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

import dcls_zoo
from dcls_zoo.errors import DclsZooError, PretrainedWeightsError
from dcls_zoo.export_format import export_state_dict, without_weight_sources
from dcls_zoo.hub import save_pretrained
from dcls_zoo.names import SOURCE_PREFIXES
from dcls_zoo.state_dicts import (
    MODEL_PREFIXES,
    clean_state_dict,
    load_state_dict_strict,
    load_torch_file,
    select_weights,
)
from dcls_zoo.weights.exports import source_config

__all__ = [
    "EXPORT_KEY",
    "PREFIXES",
    "export_checkpoint",
    "export_metadata",
    "load_checkpoint",
    "load_pretrained_weights",
    "model_from_checkpoint",
    "select_weights",
    "weights_source",
    "WeightsSource",
]

log = logging.getLogger(__name__)

PREFIXES = MODEL_PREFIXES
#: The checkpoint entry :class:`~lightning_modules.module.ImageClassifier` writes for exports:
#: ``label_names``, ``data_config`` (the evaluation preprocessing), ``dataset``, ``metrics``.
EXPORT_KEY = "dcls_zoo_export"


def load_checkpoint(path: str | os.PathLike[str], *, mmap: bool = False) -> Mapping[str, Any]:
    """A Lightning checkpoint read with ``torch.load(weights_only=True)``, or a ValueError saying why not.

    ``mmap=True`` maps the tensors instead of reading them (a quick validity check; see
    :func:`dcls_zoo.state_dicts.load_torch_file`).

    Raises:
        ValueError: no such file, a refused pickle, a truncated or garbled file, or no ``state_dict``
            (each naming the file).
    """
    try:
        checkpoint = load_torch_file(path, what="checkpoint", allowed_globals=(), mmap=mmap)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"{os.fspath(path)} is not a Lightning checkpoint: expected a dict with a 'state_dict' entry")
    return checkpoint


def _hyper_parameters(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams if isinstance(hparams, Mapping) else {}


def export_metadata(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What an export of this checkpoint should carry (:data:`EXPORT_KEY`; ``{}`` when absent)."""
    metadata = checkpoint.get(EXPORT_KEY)
    return dict(metadata) if isinstance(metadata, Mapping) else {}


def model_from_checkpoint(
    checkpoint: Mapping[str, Any],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    ema: bool | None = None,
    prefix: str | None = None,
) -> tuple[nn.Module, str]:
    """Build the checkpoint's architecture and load the selected weights strictly.

    Nothing is downloaded: the weights come from the checkpoint, so model arguments that would
    fetch weights (``pretrained``, ``pretrained_cfg_overlay``, ...) are dropped with a warning, and
    an architecture naming a source (``hf-hub:``, ``local-dir:``) is refused.

    Returns:
        ``(model in eval mode, a one-line description of the weights read)``.
    """
    import timm

    hparams = _hyper_parameters(checkpoint)
    arch = arch or hparams.get("arch")
    if not arch or not isinstance(arch, str):
        raise ValueError("the checkpoint names no architecture (hyper_parameters['arch']); pass arch=...")
    if arch.startswith(SOURCE_PREFIXES):
        raise ValueError(
            f"the checkpoint's architecture is {arch!r}, a download source; a model rebuilt from saved weights "
            "downloads nothing. Pass --arch with the registered architecture"
        )
    state, description = select_weights(checkpoint, ema)
    state, prefix, ignored = clean_state_dict(state, prefix)
    model_kwargs = hparams.get("model_kwargs")
    kwargs = without_weight_sources(model_kwargs if isinstance(model_kwargs, Mapping) else {}, "the checkpoint")
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
        load_state_dict_strict(model, state, what=f"the checkpoint's {description}")
    except ValueError as error:
        raise ValueError(f"{error} (arch {arch}, {kwargs})") from error
    notes = f"{description}, prefix {prefix!r}" + (f", {ignored} other entries ignored" if ignored else "")
    return model.eval(), notes


# --------------------------------------------------------------------------------------------
# fine-tuning: weights from anywhere into a freshly built model

#: Recorded model arguments that the fine-tuning data decides, not the weights.
_DATA_DECIDES = ("num_classes", "in_chans")


@dataclass(frozen=True)
class WeightsSource:
    """What ``pretrained=...`` names, resolved: the model its weights were made for.

    Attributes:
        name: as given.
        arch: the registered architecture the source records (``None``: a bare tag of the given arch).
        model_args: the model arguments it records (without the class and channel counts, which
            the fine-tuning data decides, and without weight sources).
        where: where the record was read, for messages.
    """

    name: str
    arch: str | None
    model_args: dict[str, Any]
    where: str


def _recorded_args(args: Any, what: str) -> dict[str, Any]:
    args = without_weight_sources(args if isinstance(args, Mapping) else {}, what)
    return {key: value for key, value in args.items() if key not in _DATA_DECIDES}


def weights_source(pretrained: str) -> WeightsSource:
    """The model a ``pretrained`` value brings: a Lightning ``.ckpt`` (its hyper-parameters), an
    export directory or ``local-dir:``/``hf-hub:`` source (its ``config.json``: only the config is
    read here), or a pretrained tag ``"arch.tag"`` (``"tag"`` alone names no architecture).

    Raises:
        ValueError: a path that does not exist, or an unreadable checkpoint or config (naming it).
    """
    path = Path(pretrained).expanduser()
    if pretrained.endswith(".ckpt") or path.is_file():
        hparams = _hyper_parameters(load_checkpoint(path, mmap=True))
        arch = hparams.get("arch")
        return WeightsSource(pretrained, arch if isinstance(arch, str) else None,
                             _recorded_args(hparams.get("model_kwargs"), f"{path}'s model_kwargs"),
                             f"{path}'s hyper-parameters")
    if path.is_dir() or pretrained.startswith(SOURCE_PREFIXES):
        name = pretrained if pretrained.startswith(SOURCE_PREFIXES) else f"local-dir:{path}"
        try:
            config = source_config(name)
        except (FileNotFoundError, DclsZooError) as error:
            raise ValueError(f"pretrained={pretrained!r}: {error}") from error
        return WeightsSource(pretrained, config["architecture"],
                             _recorded_args(config.get("model_args"), f"{name}'s config.json"), f"{name}'s config.json")
    if "/" in pretrained or os.sep in pretrained:
        raise ValueError(f"pretrained={pretrained!r}: no such file or directory")
    arch, _, tag = pretrained.rpartition(".")
    return WeightsSource(pretrained, arch or None, {}, f"the pretrained tag {pretrained!r}")


def _source_state_dict(source: str, arch: str) -> tuple[dict[str, Tensor], str]:
    path = Path(source).expanduser()
    if source.endswith(".ckpt") or path.is_file():
        state, description = select_weights(load_checkpoint(path))
        return clean_state_dict(state).state_dict, f"{path} ({description})"
    if path.is_dir():
        try:
            state, _, description = export_state_dict(path)
            return state, description
        except (FileNotFoundError, PretrainedWeightsError) as error:
            raise ValueError(f"pretrained={source!r}: {error}") from error
    if source.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        model = dcls_zoo.create_model(source, pretrained=True)
    elif "/" in source or os.sep in source:
        raise ValueError(f"pretrained={source!r}: no such file or directory")
    else:
        model = dcls_zoo.create_model(arch, pretrained=source.rpartition(".")[2])
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
        # base_chans: the source's own channel count (timm assumes RGB sources otherwise, and would
        # hand a 1-channel stem unchanged to a 3-channel model). 1 -> 3 repeats the gray filter at
        # a third of its weight, so an image with equal R, G, B gives the source's response.
        state[key] = adapt_input_conv(own[key].shape[1], state[key], base_chans=state[key].shape[1])
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
    state, description = _source_state_dict(source, arch)
    changes = _adapt(model, state)
    load_state_dict_strict(model, state, what=f"pretrained weights {description}")
    return description + (f"; {', '.join(changes)}" if changes else "")


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ema: bool | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    prefix: str | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
) -> tuple[Path, str]:
    """Write the checkpoint's model as a Hub export; returns ``(directory, weights description)``.

    The label names, the evaluation preprocessing (``data_config``), the dataset and the metrics
    default to what the training run recorded in the checkpoint
    (:data:`~lightning_modules.checkpoints.EXPORT_KEY`), so a standalone export reloads exactly
    as the run evaluated it; given values take precedence. ``repo_id`` names the Hub repo in the
    card's usage snippet (default: a ``local-dir:`` snippet).
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model, notes = model_from_checkpoint(checkpoint, arch=arch, num_classes=num_classes, ema=ema, prefix=prefix)
    recorded = export_metadata(checkpoint)
    card = dict(model_card or {})
    metrics = {**dict(recorded.get("metrics") or {}), **dict(card.get("metrics") or {})}
    if metrics:
        card["metrics"] = metrics
    if recorded.get("dataset") and not card.get("dataset"):
        card["dataset"] = recorded["dataset"]
    if "training" not in card:  # the Training table the run recorded, naming the weights exported
        training = dict(recorded.get("training") or {"run": "trained with dcls-zoo (Lightning)"})
        training["weights"] = f"{training.get('weights', 'this checkpoint')} ({Path(checkpoint_path).name}): {notes}"
        card["training"] = training
    if recorded.get("limitations") and "limitations" not in card:
        card["limitations"] = list(recorded["limitations"])
    directory = save_pretrained(
        model,
        out_dir,
        label_names=label_names if label_names is not None else recorded.get("label_names"),
        data_config=data_config if data_config is not None else recorded.get("data_config"),
        model_card=card,
        repo_id=repo_id,
    )
    return directory, notes
