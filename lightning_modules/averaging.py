"""Averaged weights that never hide what training learned: an EMA whose decay warms up with the step.

A fixed decay ``d`` averages over about ``1 / (1 - d)`` optimizer steps. Early in a run (and on any
run shorter than that) the average is still close to the initial weights, so validation, the
"best" checkpoint, the test and the export all measure a model training has barely touched.
timm's ``ModelEmaV3(use_warmup=True)`` answers this with a decay that grows with the number of
updates ``n`` (the form of Tan & Le's EfficientNet EMA):

    decay(n) = min(decay, 1 - (1 + n / gamma) ** -power)

so the average follows the raw weights closely at first and settles at ``decay`` later (with
timm's defaults ``gamma = 1``, ``power = 2/3``: 0.90 after 30 updates, 0.99 after 1,000,
0.999 after about 31,600).

The warm-up alone still lets a short run's average lag: after 37 steps of a fine-tune it spans the
last ~11, while the weights are still improving fast. So the average is also never allowed to span
more than ``max_horizon`` of the run's optimizer steps: the decay is capped at
``1 - 1 / (max_horizon * total_steps)``. With the default 0.15 the cap only binds on runs of fewer
than about 300 steps (37 steps: 0.82, the last ~5.5 steps); the quickstart's 860 steps, the
comparisons' 430 and any ImageNet run average exactly as timm's warm-up alone would.
:class:`WarmupEMAWeightAveraging` is Lightning's ``EMAWeightAveraging`` with that decay;
:func:`warmup_ema_decay` is the formula.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor
from typing_extensions import override

__all__ = ["WarmupEMAWeightAveraging", "horizon_cap", "warmup_ema_decay"]


def warmup_ema_decay(updates: int | float, decay: float, gamma: float = 1.0, power: float = 2 / 3,
                     cap: float = 1.0) -> float:
    """The decay of the ``updates``-th update (0-based): ``min(decay, 1 - (1 + updates / gamma) ** -power, cap)``."""
    return min(decay, 1.0 - (1.0 + updates / gamma) ** -power, cap)


def horizon_cap(total_steps: float, max_horizon: float) -> float:
    """The largest decay whose average spans at most ``max_horizon`` of ``total_steps`` (1: no cap)."""
    if not (0 < total_steps < float("inf")):
        return 1.0
    return 1.0 - 1.0 / max(1.0, max_horizon * total_steps)


class _WarmupEMA:
    """``AveragedModel``'s ``multi_avg_fn``: one EMA step, with the warm-up decay of update
    ``num_averaged``, over a group of tensors of one device and dtype.

    A class holding numbers (not a closure), so the callback stays picklable; the decay is read
    once per group (one host sync), not once per tensor.
    """

    def __init__(self, decay: float, gamma: float, power: float) -> None:
        self.decay, self.gamma, self.power = decay, gamma, power
        self.cap = 1.0  # set when training starts, from the run's length

    def __call__(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        if not averaged:
            return
        if not averaged[0].is_floating_point():  # counters (BatchNorm's num_batches_tracked): the model's own
            torch._foreach_copy_(averaged, current)
            return
        decay = warmup_ema_decay(int(num_averaged), self.decay, self.gamma, self.power, self.cap)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)


class WarmupEMAWeightAveraging(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose decay warms up with the number of updates (see the module docstring).

    ``AveragedModel`` counts its updates in its ``n_averaged`` buffer, which checkpoints keep, so a
    resumed run continues the warm-up where it stopped.

    Args:
        decay: the decay reached once warmed up (0 < decay < 1).
        warmup_gamma: updates scale of the warm-up (larger: slower warm-up).
        warmup_power: exponent of the warm-up (timm's 2/3; 3/4 for very long runs).
        max_horizon: the largest share of the run's optimizer steps the average may span (its decay
            capped at ``1 - 1 / (max_horizon * total_steps)``); 1 keeps timm's decay alone.
        **kwargs: ``EMAWeightAveraging``'s other arguments (``device``, ``use_buffers``,
            ``update_every_n_steps``, ``update_starting_at_step``, ``update_starting_at_epoch``).
    """

    def __init__(self, decay: float = 0.999, warmup_gamma: float = 1.0, warmup_power: float = 2 / 3,
                 max_horizon: float = 0.15, **kwargs: Any) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        if not 0.0 < max_horizon <= 1.0:
            raise ValueError(f"max_horizon must be in (0, 1], got {max_horizon!r}")
        if warmup_gamma <= 0 or warmup_power <= 0:
            raise ValueError(f"warmup_gamma and warmup_power must be positive, got {warmup_gamma!r}, {warmup_power!r}")
        super().__init__(decay=decay, **kwargs)
        self.decay, self.warmup_gamma, self.warmup_power = decay, warmup_gamma, warmup_power
        self.max_horizon = max_horizon
        # EMAWeightAveraging hands AveragedModel a fixed-decay avg_fn: replace it with the warm-up one.
        self._kwargs.pop("avg_fn", None)
        self._average = _WarmupEMA(decay, warmup_gamma, warmup_power)
        self._kwargs["multi_avg_fn"] = self._average

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the run's length is known once its loaders are: cap the decay so the average spans at
        # most max_horizon of it (a resumed run computes the same cap from the same settings)
        self._average.cap = horizon_cap(trainer.estimated_stepping_batches, self.max_horizon)

    def describe(self) -> str:
        """The averaging in words, for model cards."""
        capped = f", at most {self.max_horizon:g} of the run's steps" if self.max_horizon < 1 else ""
        return (f"EMA of the weights for validation, test and export (decay {self.decay:g}, warmed up as "
                f"min(decay, 1 - (1 + n/{self.warmup_gamma:g})^-{self.warmup_power:.3g}) over the n updates{capped})")
