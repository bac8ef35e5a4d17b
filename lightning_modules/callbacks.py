"""Lightning callbacks that hold dcls-zoo's engineering (the science lives in the modules).

- :class:`ClampPositions`: keeps every DCLS position inside its window after each optimizer step.
- :class:`SigmaSchedule`: drives the Gaussian/triangle width ``SIG`` along a fixed schedule.
- :class:`EpochSeed`: reseeds every epoch, so a run resumed from an epoch-end checkpoint replays
  the same data order, augmentations and mixup as an uninterrupted one.
- :class:`HubPushCallback`: pushes the trained model to the Hugging Face Hub.
- :class:`~lightning_modules.position_monitor.PositionMonitor` (re-exported here): position
  histograms, speeds and kernel pictures, with :func:`~lightning_modules.position_monitor.position_groups`,
  which finds each distinct position tensor of a network once.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from dcls_zoo.positions import clamp_model_positions_, dcls_layers

from .position_monitor import PositionGroup, PositionMonitor, network_of, position_groups

__all__ = ["ClampPositions", "EpochSeed", "SigmaSchedule", "PositionMonitor", "HubPushCallback"]

log = logging.getLogger(__name__)


class ClampPositions(Callback):
    """Clamp every DCLS position of the network into its window after each optimizer step.

    The official training clamps the positions after every step; a position that left the
    window would only keep its edge tap (bilinear) or fade out (Gaussian). Clamping runs in
    ``on_train_batch_end``, which follows ``optimizer.step()``; it is idempotent, so running it
    after the micro-batches of a gradient-accumulation window too is harmless.

    List it **before** any :class:`~lightning.pytorch.callbacks.WeightAveraging` (e.g.
    ``EMAWeightAveraging``): callbacks run in list order and the averaging also updates in
    ``on_train_batch_end``, so listed after it the average would take in unclamped positions.
    ``setup`` raises on the wrong order. A network without DCLS layers gets one warning (the
    callback can stay in a config shared with plain-conv baselines).

    Args:
        model_attribute: attribute of the LightningModule that holds the network.
    """

    def __init__(self, model_attribute: str = "model") -> None:
        self.model_attribute = model_attribute
        self._warned_no_layers = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_order(trainer)
        network = network_of(pl_module, self.model_attribute, type(self).__name__)
        if not dcls_layers(network) and not self._warned_no_layers:
            self._warned_no_layers = True
            rank_zero_warn(
                f"ClampPositions: {type(pl_module).__name__}.{self.model_attribute} ({type(network).__name__}) has no "
                f"DCLS layer; there is nothing to clamp."
            )

    def _check_order(self, trainer: pl.Trainer) -> None:
        callbacks = trainer.callbacks
        mine = next(index for index, callback in enumerate(callbacks) if callback is self)
        averaging = [type(callback).__name__ for callback in callbacks[:mine] if isinstance(callback, WeightAveraging)]
        if averaging:
            raise MisconfigurationException(
                f"ClampPositions is listed after {', '.join(averaging)} in trainer.callbacks; list ClampPositions "
                f"before the EMA/weight-averaging callback. Both act in on_train_batch_end in list order, so the "
                f"average would otherwise take in positions that have not been clamped into their window."
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        clamp_model_positions_(getattr(pl_module, self.model_attribute))


class EpochSeed(Callback):
    """Reseed Python, NumPy and torch at the start of every training epoch from ``(seed, epoch, rank)``.

    Lightning checkpoints hold the model, optimizer, scheduler, EMA and loop state but not the
    random generators, so a resumed run would shuffle, augment, mix and drop paths differently
    from an uninterrupted one. Reseeding at ``on_train_epoch_start`` (which precedes the creation
    of the epoch's data iterator) makes every epoch's randomness a function of its index: resuming
    from an epoch-end checkpoint (``last.ckpt``) continues exactly. Mid-epoch checkpoints resume
    with the epoch's sequence restarted, not continued.

    Args:
        seed: base seed; ``None`` takes the run's ``seed_everything`` value (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def epoch_seed(self, epoch: int, rank: int) -> int:
        """The seed of one epoch on one process (distinct across epochs and ranks)."""
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        return (base * 1_000_003 + epoch * 1_009 + rank) % 2**32

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import numpy as np

        seed = self.epoch_seed(trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device
        # The global generator alone is not enough: when Lightning creates the epoch's data iterator
        # (before or after this hook, depending on whether the run was resumed) it draws from the
        # generator the loader uses. DataModules with a ``reseed`` method keep that one apart.
        reseed = getattr(trainer.datamodule, "reseed", None)
        if callable(reseed):
            reseed(seed)


class SigmaSchedule(Callback):
    """Drive the effective width of every Gaussian/triangle DCLS element along a fixed schedule.

    The width goes from ``start`` to ``end`` over the epochs ``[0, end_epoch)`` (``shape``
    ``"linear"`` or ``"cosine"``) and stays at ``end`` afterwards; with ``interval="step"`` it
    moves after every optimizer step (``global_step`` over the optimizer steps per epoch), with
    ``"epoch"`` once per epoch. Widths are the effective ones: ``SIG`` is written so that
    ``|SIG| + offset`` equals the scheduled width, with the layer's interpolation's offset
    (0.27 gauss, 1 triangle), so ``start``/``end`` below the offset are rejected.

    While the callback is attached the widths are **not learned**: ``setup`` sets
    ``requires_grad_(False)`` on every ``SIG`` (before ``configure_optimizers``, so recipes that
    skip frozen parameters leave them out, and before DDP wraps the model), and ``teardown``
    restores the previous flags. Learning a width that is overwritten before every step would
    only waste optimizer state; the SNN-delays work likewise used a fixed, decreasing sigma.

    Positions shared by a stage share their ``SIG``: it is written once per step. The width is a
    function of the epoch (or step), so a resumed run picks it up without any saved state; it is
    written before the sanity check (when the position in the schedule is already known),
    at every epoch start (``"epoch"``) or every batch start (``"step"``).

    Under ``EMAWeightAveraging`` the averaged model's ``SIG`` is the average of the scheduled
    values, lagging the schedule by about ``1 / (1 - decay)`` steps; end the schedule well
    before the last epoch if the final (EMA) model should have width ``end``.

    Args:
        start: effective width at epoch 0.
        end: effective width from ``end_epoch`` on.
        end_epoch: epochs the schedule takes (>= 1).
        interval: ``"epoch"`` or ``"step"``.
        shape: ``"linear"`` or ``"cosine"`` (half cosine from ``start`` to ``end``).
        model_attribute: attribute of the LightningModule that holds the network.
    """

    def __init__(
        self,
        start: float,
        end: float,
        end_epoch: int,
        interval: Literal["epoch", "step"] = "epoch",
        shape: Literal["linear", "cosine"] = "linear",
        model_attribute: str = "model",
    ) -> None:
        if not (start > 0 and end > 0):
            raise ValueError(f"start and end must be positive widths, got start={start}, end={end}")
        if isinstance(end_epoch, bool) or not isinstance(end_epoch, int) or end_epoch < 1:
            raise ValueError(f"end_epoch must be an int >= 1, got {end_epoch!r}")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}")
        if shape not in ("linear", "cosine"):
            raise ValueError(f"shape must be 'linear' or 'cosine', got {shape!r}")
        self.start, self.end, self.end_epoch = float(start), float(end), end_epoch
        self.interval, self.shape = interval, shape
        self.model_attribute = model_attribute
        self.groups: list[PositionGroup] = []  # the distinct SIG tensors, found in setup
        self._requires_grad: list[bool] = []

    def width_at(self, epochs: float) -> float:
        """The scheduled effective width after ``epochs`` (fractional) training epochs."""
        progress = min(max(epochs / self.end_epoch, 0.0), 1.0)
        if self.shape == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return self.start + (self.end - self.start) * progress

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network = network_of(pl_module, self.model_attribute, type(self).__name__)
        self.groups = [group for group in position_groups(network) if group.SIG is not None]
        if not self.groups:
            raise MisconfigurationException(
                f"SigmaSchedule: {type(pl_module).__name__}.{self.model_attribute} ({type(network).__name__}) has no "
                f"DCLS layer with a width SIG (bilinear layers have none); build it with version 'gauss' or "
                f"'triangle', or drop the callback."
            )
        for group in self.groups:
            offset = group.owner.interpolation.sigma_offset
            if min(self.start, self.end) < offset:
                raise MisconfigurationException(
                    f"SigmaSchedule: {group.name} uses {group.owner.interpolation.name!r} elements, whose effective "
                    f"width |SIG| + {offset} cannot go below {offset}; got start={self.start}, end={self.end}."
                )
        self._requires_grad = [group.SIG.requires_grad for group in self.groups]
        for group in self.groups:
            group.SIG.requires_grad_(False)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for group, requires_grad in zip(self.groups, self._requires_grad):
            group.SIG.requires_grad_(requires_grad)

    def elapsed_epochs(self, trainer: pl.Trainer) -> float | None:
        """Where training is in the schedule, in epochs; ``None`` while it cannot be known yet
        (``"step"`` on a resumed run before the train dataloader is set up)."""
        if self.interval == "epoch":
            return float(trainer.current_epoch)
        if trainer.global_step == 0:
            return 0.0
        batches = trainer.num_training_batches
        if not (0 < batches < math.inf):
            return None
        # the optimizer steps at the end of every accumulation window and at the epoch's last batch
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        return trainer.global_step / steps_per_epoch

    @torch.no_grad()
    def apply(self, trainer: pl.Trainer) -> float | None:
        """Write the scheduled width into every ``SIG`` (each shared one once); returns it."""
        epochs = self.elapsed_epochs(trainer)
        if epochs is None:
            return None
        width = self.width_at(epochs)
        for group in self.groups:
            group.SIG.fill_(width - group.owner.interpolation.sigma_offset)
        return width

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(trainer)  # validation before training sees the width training starts with

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "step" and not trainer.num_training_batches < math.inf:
            raise MisconfigurationException(
                "SigmaSchedule(interval='step') needs the number of training batches per epoch, but the train "
                "dataloader has no length; use interval='epoch' or a sized dataloader."
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self.apply(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self.apply(trainer)


class HubPushCallback(Callback):
    """Push the trained model to the Hugging Face Hub when fitting ends (and every N epochs).

    The final push runs in ``on_fit_end``: after every ``on_train_end`` hook, so the last
    checkpoint is written and an averaging callback (EMA) has already copied its weights into
    the model. Only global rank zero pushes. A failure (no token, network, Hub error) is logged
    with what to do and never stops training; the local export is kept for a retry with
    ``dcls-zoo push <export> --repo-id <repo_id>``.

    Args:
        repo_id: ``org/name`` of the Hub repository (created if missing).
        every_n_epochs: also push after every N-th training epoch (``None``: only at the end).
        model_attribute: attribute of the LightningModule that holds the network.
        export_dir: where the exports go (default ``<trainer.default_root_dir>/hub_export``).
        revision, private, token, model_card: passed to :func:`dcls_zoo.push_to_hub`.
    """

    def __init__(
        self,
        repo_id: str,
        every_n_epochs: int | None = None,
        model_attribute: str = "model",
        export_dir: str | Path | None = None,
        revision: str | None = None,
        private: bool = False,
        token: str | None = None,
        model_card: Mapping[str, Any] | None = None,
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or None, got {every_n_epochs}")
        self.repo_id = repo_id
        self.every_n_epochs = every_n_epochs
        self.model_attribute = model_attribute
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.revision, self.private, self.token = revision, private, token
        self.model_card = dict(model_card or {})
        self.pushed: list[Path] = []  # exports uploaded by this run, in order

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._push(trainer, pl_module, f"epoch={trainer.current_epoch}", trainer.current_epoch + 1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._push(trainer, pl_module, "final", trainer.current_epoch)  # the counter moved past the last epoch

    def _push(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, epochs_done: int) -> None:
        if not trainer.is_global_zero:
            return
        from dcls_zoo import push_to_hub

        model = getattr(pl_module, self.model_attribute)
        local_dir = (self.export_dir or Path(trainer.default_root_dir) / "hub_export") / name
        card = dict(self.model_card)
        # the card reports the run: its latest logged metrics and where training stopped
        metrics = {key: round(float(value), 6) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        if metrics and "metrics" not in card:
            card["metrics"] = metrics
        card.setdefault("training", f"{epochs_done} epoch(s), {trainer.global_step} optimizer steps "
                                    f"(dcls-zoo HubPushCallback, push '{name}')")
        try:
            result = push_to_hub(
                model, self.repo_id, revision=self.revision, private=self.private, token=self.token,
                commit_message=f"dcls-zoo: {name} ({epochs_done} epochs, step {trainer.global_step})",
                model_card=card, local_dir=local_dir,
            )
        except Exception as error:  # a failed push must never cost the run
            log.warning(
                "HubPushCallback: pushing %s to %s failed (%s: %s). Training goes on; the export is at %s "
                "if it was written: retry with `dcls-zoo push %s --repo-id %s`.",
                name, self.repo_id, type(error).__name__, error, local_dir, local_dir, self.repo_id,
            )
            return
        self.pushed.append(Path(result.local_dir))
        log.info("HubPushCallback: pushed %s to %s (%s)", name, self.repo_id, result.local_dir)
