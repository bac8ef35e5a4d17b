"""The job after ``dcls-zoo fit``: test the selected checkpoint, export it, print and save the summary.

It runs from what the run wrote (:func:`lightning_modules.runs.selected_checkpoint`): the best
checkpoint when validation ran, else the newest one (a run stopped by ``--trainer.max_steps``
mid-epoch has no best one), and says which in the :class:`~lightning_modules.runs.RunSummary`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from dcls_zoo.positions import mean_position_shift

from ..checkpoints import export_checkpoint, load_checkpoint, select_weights
from ..run_record import limitations, summary_training_record
from ..runs import RunSummary, selected_checkpoint

__all__ = ["finish_fit", "model_size"]


def finish_fit(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    *,
    test: bool,
    export: bool,
    fit_seconds: float,
    resumed_from: str | None = None,
    fingerprint: str | None = None,
) -> RunSummary:
    """Test and export the run's checkpoint as asked; write ``summary.json`` in the run folder.

    Args:
        test, export: ``--test_after_fit`` and ``--export_after_fit``.
        fit_seconds: the wall time of this ``trainer.fit`` (on a resume: of this part).
        resumed_from: the ``--ckpt_path`` the fit resumed from, if any.
        fingerprint: the fingerprint of the run's settings.

    Returns:
        the summary (also printed on rank zero).
    """
    log_dir = trainer.log_dir  # a collective under DDP: every rank asks, here
    checkpoint, which = selected_checkpoint(trainer)
    summary = RunSummary(
        arch=model.hparams.arch, epochs=trainer.current_epoch, global_steps=trainer.global_step,
        fit_seconds=round(fit_seconds, 1), log_dir=log_dir, resumed_from=str(resumed_from) if resumed_from else None,
        checkpoint=checkpoint or None, checkpoint_kind=which, fingerprint=fingerprint,
    )
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_score is not None:
            summary.best_validation[f"best_{callback.monitor}"] = round(float(callback.best_model_score), 4)
            break
    if test:
        if checkpoint:
            # Load the weights ourselves: trainer.test(ckpt_path=...) right after fit lets an EMA
            # callback, still set up, put the checkpoint's raw weights back instead of the averaged
            # ones the checkpoint was selected by.
            state, summary.tested_weights = select_weights(load_checkpoint(checkpoint))
            model.load_state_dict(state)
        results = trainer.test(model, datamodule=datamodule)
        summary.test = {key: round(float(value), 4) for key, value in (results[0] if results else {}).items()}
        summary.test_images = _test_images(trainer)
    # of the tested weights (DCLS: their positions set the MACs)
    summary.params, summary.macs_per_image = model_size(model)
    summary.positions_frozen, summary.position_shift_px = position_movement(model)
    if export and trainer.is_global_zero:
        if checkpoint:
            card = {"training": summary_training_record(trainer, model, datamodule, summary),
                    "limitations": limitations(datamodule, summary.test_top1, summary.test_images)}
            summary.export_dir = str(_export(checkpoint, summary, datamodule, card,
                                             Path(log_dir or trainer.default_root_dir)))
        else:  # fast_dev_run, or no ModelCheckpoint callback
            summary.export_dir = "skipped: the run wrote no checkpoint (add a ModelCheckpoint callback)"
    if trainer.is_global_zero:
        print("\n".join(summary.lines()), flush=True)  # the job's result, on stdout
        if log_dir:
            summary.write(log_dir)
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


def position_movement(model: pl.LightningModule) -> tuple[bool | None, dict[str, float] | None]:
    """``(positions frozen?, {group: mean |P - P_initial| in px})`` of the model's weights now (after
    the test: the tested ones), measured from the positions the run started from
    (:func:`dcls_zoo.positions.mean_position_shift`); ``(None, None)`` without DCLS positions."""
    initial = getattr(model, "initial_positions", None)
    network = getattr(model, "model", None)
    if not initial or not isinstance(network, torch.nn.Module):
        return None, None
    shifts = mean_position_shift(initial, network)
    return bool(model.hparams.get("freeze_positions", False)), {name: round(value, 4) for name, value in shifts.items()}


def model_size(model: pl.LightningModule) -> tuple[int, int | None]:
    """``(params, macs_per_image)`` of the trained network.

    Lightning's :class:`~lightning.pytorch.utilities.model_summary.ModelSummary` counts the
    parameters (each shared tensor once) and, with the module's ``example_input_array`` (one
    image at the data's size), the FLOPs of one forward with PyTorch's FLOP counter; a
    multiply-add is two of them. A DCLS layer convolves the part of its window its elements
    reach, so its count depends on the positions (``macs_per_image`` is left out without an
    example input).
    """
    size = ModelSummary(model, max_depth=0)
    macs = int(size.total_flops) // 2 if model.example_input_array is not None else None
    return int(size.total_parameters), macs


def _export(checkpoint: str, summary: RunSummary, datamodule: pl.LightningDataModule,
            run_card: Mapping[str, Any], run_dir: Path) -> Path:
    """Export ``checkpoint`` to ``<run_dir>/export`` with the run's metrics, recipe and limitations."""
    metrics = {**summary.test, **summary.best_validation}
    card = {"metrics": metrics, "dataset": getattr(datamodule, "hub_dataset", None), **run_card}
    directory, _ = export_checkpoint(
        checkpoint,
        run_dir / "export",
        label_names=getattr(datamodule, "class_names", None),
        data_config=datamodule.data_config() if hasattr(datamodule, "data_config") else None,
        model_card={key: value for key, value in card.items() if value},
    )
    return directory
