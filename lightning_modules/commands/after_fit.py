"""The job after ``dcls-zoo fit``: test the best checkpoint, export it, print and save the summary.

It runs from what the run wrote: the best checkpoint when validation ran, else the newest
``last.ckpt`` (a run stopped by ``--trainer.max_steps`` mid-epoch has no best one), and says which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from ..checkpoints import export_checkpoint, load_checkpoint, select_weights
from ..displacement import mean_position_shift
from ..run_record import limitations, training_record

__all__ = ["finish_fit", "format_summary", "model_size", "newest_checkpoint"]


def newest_checkpoint(trainer: pl.Trainer) -> tuple[str, str]:
    """``(path, which)`` of the checkpoint to test and export: the best one a monitoring
    :class:`~lightning.pytorch.callbacks.ModelCheckpoint` kept, else the newest one any
    checkpoint callback wrote (``which`` is ``"best"`` or ``"last"``); ``("", "none")`` if none."""
    callbacks = trainer.checkpoint_callbacks
    for callback in callbacks:
        if callback.monitor and callback.best_model_path and Path(callback.best_model_path).is_file():
            return callback.best_model_path, "best"
    written = [
        Path(path)
        for callback in callbacks
        for path in (callback.last_model_path, callback.best_model_path)
        if path and Path(path).is_file()
    ]
    if not written:
        return "", "none"
    return str(max(written, key=lambda path: path.stat().st_mtime_ns)), "last"


def finish_fit(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    *,
    test: bool,
    export: bool,
    fit_seconds: float,
    resumed_from: str | None = None,
) -> dict[str, Any]:
    """Test and export the run's checkpoint as asked; write ``summary.json`` in the run folder.

    Args:
        test, export: ``--test_after_fit`` and ``--export_after_fit``.
        fit_seconds: the wall time of this ``trainer.fit`` (on a resume: of this part).
        resumed_from: the ``--ckpt_path`` the fit resumed from, if any.

    Returns:
        the summary (also printed on rank zero).
    """
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks, here
    summary: dict[str, Any] = {
        "arch": model.hparams.arch,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 1),
        "log_dir": log_dir,
    }
    if resumed_from:
        summary["resumed_from"] = str(resumed_from)
    checkpoint, which = newest_checkpoint(trainer)
    if checkpoint:
        summary[f"{which}_checkpoint"] = checkpoint
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_score is not None:
            summary[f"best_{callback.monitor}"] = round(float(callback.best_model_score), 4)
            break
    if test:
        if checkpoint:
            # Load the weights ourselves: trainer.test(ckpt_path=...) right after fit lets an EMA
            # callback, still set up, put the checkpoint's raw weights back instead of the averaged
            # ones the checkpoint was selected by.
            state, summary["tested_weights"] = select_weights(load_checkpoint(checkpoint))
            model.load_state_dict(state)
        results = trainer.test(model, datamodule=datamodule)
        summary.update({key: round(float(value), 4) for key, value in (results[0] if results else {}).items()})
        images = _test_images(trainer)
        if images is not None:
            summary["test_images"] = images
    summary.update(model_size(model))  # of the tested weights (DCLS: their positions set the MACs)
    summary.update(position_movement(model))
    if export and trainer.is_global_zero:
        if checkpoint:
            card = {"training": training_record(trainer, model, datamodule, summary),
                    "limitations": limitations(datamodule, summary)}
            summary["export_dir"] = str(_export(checkpoint, summary, datamodule, card,
                                                Path(log_dir or trainer.default_root_dir)))
        else:  # fast_dev_run, or no ModelCheckpoint callback
            summary["export_dir"] = "skipped: the run wrote no checkpoint (add a ModelCheckpoint callback)"
    if trainer.is_global_zero:
        print(format_summary(summary), flush=True)  # the job's result, on stdout
        if log_dir:
            Path(log_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _test_images(trainer: pl.Trainer) -> int | None:
    """How many test images the test just scored (fewer than the set under ``limit_test_batches``)."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    batches = trainer.num_test_batches
    dataset, batch_size = getattr(loader, "dataset", None), getattr(loader, "batch_size", None)
    if not batches or not hasattr(dataset, "__len__") or not isinstance(batch_size, int) or math.isinf(batches[0]):
        return None
    return min(len(dataset), int(batches[0]) * batch_size)  # test loaders keep every example (no drop_last)


def position_movement(model: pl.LightningModule) -> dict[str, Any]:
    """``{"positions_frozen": ..., "position_shift_px": {group: mean |P - P_initial|}}`` of the
    model's weights now (after the test: the tested ones), measured from the positions the run
    started from (:mod:`lightning_modules.displacement`); ``{}`` without DCLS positions."""
    initial = getattr(model, "initial_positions", None)
    network = getattr(model, "model", None)
    if not initial or not isinstance(network, torch.nn.Module):
        return {}
    shifts = mean_position_shift(initial, network)
    return {"positions_frozen": bool(model.hparams.get("freeze_positions", False)),
            "position_shift_px": {name: round(value, 4) for name, value in shifts.items()}}


def model_size(model: pl.LightningModule) -> dict[str, int]:
    """``{"params": ..., "macs_per_image": ...}`` of the trained network.

    Lightning's :class:`~lightning.pytorch.utilities.model_summary.ModelSummary` counts the
    parameters (each shared tensor once) and, with the module's ``example_input_array`` (one
    image at the data's size), the FLOPs of one forward with PyTorch's FLOP counter; a
    multiply-add is two of them. A DCLS layer convolves the part of its window its elements
    reach, so its count depends on the positions (``macs_per_image`` is left out without an
    example input).
    """
    size = ModelSummary(model, max_depth=0)
    counts = {"params": int(size.total_parameters)}
    if model.example_input_array is not None:
        counts["macs_per_image"] = int(size.total_flops) // 2
    return counts


def _export(checkpoint: str, summary: Mapping[str, Any], datamodule: pl.LightningDataModule,
            run_card: Mapping[str, Any], run_dir: Path) -> Path:
    """Export ``checkpoint`` to ``<run_dir>/export`` with the run's metrics, recipe and limitations."""
    metrics = {key: value for key, value in summary.items() if key.startswith(("test/", "best_val"))}
    card = {"metrics": metrics, "dataset": getattr(datamodule, "hub_dataset", None), **run_card}
    directory, _ = export_checkpoint(
        checkpoint,
        run_dir / "export",
        label_names=getattr(datamodule, "class_names", None),
        data_config=datamodule.data_config() if hasattr(datamodule, "data_config") else None,
        model_card={key: value for key, value in card.items() if value},
    )
    return directory


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as an aligned two-column block."""
    width = max(len(key) for key in summary)
    lines = ["", "dcls-zoo fit summary", "-" * 20] + [f"{key:<{width}}  {value}" for key, value in summary.items()]
    return "\n".join(lines)
