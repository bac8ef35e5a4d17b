"""The paper's training-time rules for DCLS positions and widths, as Lightning callbacks.

These are the method, not engineering: they change what the network learns.

- :class:`ClampPositions`: keeps every DCLS position inside its window after each optimizer step
  (the authors clamp after every step).
- :class:`SigmaSchedule`: drives the Gaussian/triangle width ``SIG`` along a fixed schedule.

Their order matters with weight averaging (EMA): :class:`ClampPositions` checks it at ``setup``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from dcls_zoo.positions import PositionOwner, dcls_layers, position_owners

__all__ = ["ClampPositions", "SigmaSchedule", "network_of"]


def network_of(pl_module: pl.LightningModule, attribute: str, caller: str) -> nn.Module:
    """The network the LightningModule holds as ``attribute``, or an error naming the fix."""
    network = getattr(pl_module, attribute, None)
    if not isinstance(network, nn.Module):
        found = "has no attribute" if network is None else f"holds a {type(network).__name__} as"
        raise MisconfigurationException(
            f"{caller}: {type(pl_module).__name__} {found} {attribute!r}; pass model_attribute=<the name of the "
            f"attribute that holds the network>"
        )
    return network


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
    callback can stay in a config shared with plain-conv baselines). Frozen positions (``P`` with
    ``requires_grad`` off, e.g. ``ImageClassifier(freeze_positions=True)``) are left exactly as
    they are.

    Args:
        model_attribute: attribute of the LightningModule that holds the network.
    """

    def __init__(self, model_attribute: str = "model") -> None:
        self.model_attribute = model_attribute
        self._warned_no_layers = False

    @override
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
        for holder in position_owners(getattr(pl_module, self.model_attribute)):
            if holder.owner.P.requires_grad:  # frozen positions keep their initial values bit for bit
                holder.owner.clamp_positions_()


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
        self.groups: list[PositionOwner] = []  # the distinct SIG tensors, found in setup
        self._requires_grad: list[bool] = []

    def width_at(self, epochs: float) -> float:
        """The scheduled effective width after ``epochs`` (fractional) training epochs."""
        progress = min(max(epochs / self.end_epoch, 0.0), 1.0)
        if self.shape == "cosine":
            progress = (1.0 - math.cos(math.pi * progress)) / 2.0
        return self.start + (self.end - self.start) * progress

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if pl_module.hparams.get("freeze_positions"):
            raise MisconfigurationException(
                "SigmaSchedule writes the DCLS widths SIG, which model.freeze_positions keeps at their initial "
                "values; drop the callback or freeze_positions."
            )
        network = network_of(pl_module, self.model_attribute, type(self).__name__)
        self.groups = [group for group in position_owners(network) if group.SIG is not None]
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

    @override
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

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(trainer)  # validation before training sees the width training starts with

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "step" and not trainer.num_training_batches < math.inf:
            raise MisconfigurationException(
                "SigmaSchedule(interval='step') needs the number of training batches per epoch, but the train "
                "dataloader has no length; use interval='epoch' or a sized dataloader."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self.apply(trainer)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self.apply(trainer)
