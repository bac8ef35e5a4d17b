"""What a finished training run was, in words: the recipe, the data, the seed, the limitations.

:func:`training_record` and :func:`limitations` read the Trainer, the LightningModule and the
DataModule after ``fit``; the export puts them in the model card (``training`` and
``limitations``), so a card says how its weights were made and how far to trust its numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging

from dcls_zoo.machine import machine_description

from .averaging import WarmupEMAWeightAveraging
from .method import ClampPositions
from .runs import RunSummary

__all__ = ["limitations", "summary_training_record", "training_record"]


def _optimizer_phrase(trainer: pl.Trainer, module: pl.LightningModule) -> str:
    if not trainer.optimizers:
        return "none recorded"
    optimizer = trainer.optimizers[0]
    groups = optimizer.param_groups
    peak = max(group.get("initial_lr", group["lr"]) for group in groups)
    decay = max(group.get("weight_decay", 0.0) for group in groups)
    phrase = f"{type(optimizer).__name__}, peak learning rate {peak:g}, weight decay {decay:g}"
    scale = getattr(module.hparams, "position_lr_scale", None)
    if getattr(module, "has_positions", False) and module.hparams.get("freeze_positions"):
        phrase += "; DCLS positions and widths frozen at their initial values (not trained, not clamped)"
    elif getattr(module, "has_positions", False) and scale is not None:
        phrase += f"; DCLS positions at {scale:g}x the rate, without weight decay"
    return phrase


def _schedule_phrase(hparams: Mapping[str, Any]) -> str:
    warmup, floor = hparams.get("warmup_epochs"), hparams.get("min_lr_ratio")
    if warmup is None or floor is None:
        return "not recorded"
    return f"linear warmup over {warmup:g} epoch(s), then cosine to {floor:g} x the peak, stepped per optimizer step"


def _regularisation_phrase(trainer: pl.Trainer, module: pl.LightningModule) -> str:
    hp = module.hparams
    parts = [f"label smoothing {hp.get('label_smoothing', 0):g}"]
    if hp.get("mixup_alpha") or hp.get("cutmix_alpha"):
        parts.append(f"mixup {hp.mixup_alpha:g} / cutmix {hp.cutmix_alpha:g}")
    if (hp.get("model_kwargs") or {}).get("drop_path_rate"):
        parts.append(f"stochastic depth {hp.model_kwargs['drop_path_rate']:g}")
    if trainer.gradient_clip_val:
        parts.append(f"gradients clipped at norm {trainer.gradient_clip_val:g}")
    for callback in trainer.callbacks:
        if isinstance(callback, WarmupEMAWeightAveraging):
            parts.append(callback.describe())
        elif isinstance(callback, EMAWeightAveraging):  # Lightning's keeps its fixed decay inside its avg_fn
            parts.append("EMA of the weights for validation, test and export (fixed decay, no warm-up)")
    start = getattr(module, "repulsive_loss_start", None)
    if getattr(module, "has_positions", False):
        if start is not None:
            parts.append(f"repulsive position loss (weight {hp.repulsive_loss_weight:g}) after {start} epoch(s)")
        if any(isinstance(c, ClampPositions) for c in trainer.callbacks) and not hp.get("freeze_positions"):
            parts.append("positions clamped to their window after every step")
    return "; ".join(parts)


def training_record(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, *, epochs: int,
                    steps: int, fit_seconds: float | None = None, weights: str | None = None,
                    positions_frozen: bool | None = None,
                    position_shift_px: Mapping[str, float] | None = None) -> dict[str, str]:
    """The run as ``setting -> sentence`` (the model card's Training table): the one home of that
    text, for the export after fit, every checkpoint (``dcls-zoo export`` of it) and Hub pushes.

    Args:
        epochs, steps: how far training went (for the weights the card describes).
        fit_seconds: how long it took (``None``: not known yet).
        weights: which weights the card describes, in words.
        positions_frozen, position_shift_px: how the DCLS positions moved, when measured.
    """
    batch_size = getattr(datamodule, "batch_size", None)
    describe = getattr(datamodule, "describe", None)
    pretrained = module.hparams.get("pretrained")
    record = {
        "initial weights": f"fine-tuned from {pretrained}" if pretrained else "random initialisation",
        "data": (describe() if callable(describe) else type(datamodule).__name__) if datamodule is not None
        else "dataloaders passed to Trainer.fit (no DataModule)",
        "epochs": f"{epochs} ({steps} optimizer steps" + (f", batch {batch_size}" if batch_size else "") + ")",
        "optimizer": _optimizer_phrase(trainer, module),
        "schedule": _schedule_phrase(module.hparams),
        "regularisation": _regularisation_phrase(trainer, module),
        "precision": str(trainer.precision),
        "seed": os.environ.get("PL_GLOBAL_SEED", "not set"),
    }
    if fit_seconds is not None:
        record["fit time"] = (f"{float(fit_seconds) / 60:.1f} min on {trainer.num_devices} "
                              f"{trainer.accelerator.__class__.__name__.replace('Accelerator', '')} device(s); "
                              f"{machine_description()}")
    if position_shift_px:
        moved = ", ".join(f"{name} {value:.2f} px" for name, value in position_shift_px.items())
        record["positions"] = ("frozen at their initial values" if positions_frozen
                               else "learned") + f"; mean absolute shift from the initial positions (tested weights): {moved}"
    if weights:
        record["weights"] = weights
    return record


def summary_training_record(trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any,
                            summary: RunSummary) -> dict[str, str]:
    """:func:`training_record` of a finished fit, from its :class:`~lightning_modules.runs.RunSummary`."""
    weights = None
    if summary.checkpoint:
        which = "the best validation epoch" if summary.checkpoint_kind == "best" else "the last epoch"
        weights = f"{which} ({os.path.basename(summary.checkpoint)})" + (
            f", {summary.tested_weights}" if summary.tested_weights else "")
    return training_record(trainer, module, datamodule, epochs=summary.epochs, steps=summary.global_steps,
                           fit_seconds=summary.fit_seconds, weights=weights, positions_frozen=summary.positions_frozen,
                           position_shift_px=summary.position_shift_px)


def limitations(datamodule: Any, test_top1: float | None = None, test_images: int | None = None) -> list[str]:
    """Sentences on how far the run's numbers go (the model card's Limitations section).

    ``test_top1``, ``test_images``: the test result, when the run was tested.
    """
    notes = []
    if isinstance(test_top1, (int, float)) and isinstance(test_images, int) and test_images > 0:
        error = math.sqrt(max(test_top1 * (1 - test_top1), 0.0) / test_images)
        notes.append(f"The test top-1 comes from {test_images:,} images: its binomial standard error is about "
                     f"{100 * error:.1f} points, so smaller differences between models are not resolved by one run.")
    notes.append("One training run with one seed: the spread over seeds is not measured here "
                 "(`dcls-zoo compare` trains several seeds of several architectures).")
    if getattr(datamodule, "data_dir", "") is None and hasattr(datamodule, "split_indices"):
        notes.append("Trained on the small Fashion-MNIST subset embedded in dcls-zoo, for a short schedule: "
                     "a demonstration of the recipe, not a competitive Fashion-MNIST model.")
    notes.append("Trained for one dataset and input size; other inputs need fine-tuning, and the accuracy "
                 "says nothing about robustness to distribution shift.")
    return notes
