"""Averaged weights that never hide what training learned: an EMA whose decay warms up with the step.

A fixed decay ``d`` averages over about ``1 / (1 - d)`` optimizer steps. Early in a run (and on any
run shorter than that) the average is still close to the initial weights, so validation, the
"best" checkpoint, the test and the export all measure a model training has barely touched.
timm's ``ModelEmaV3(use_warmup=True)`` answers this with a decay that grows with the number of
updates ``n`` (the form of Tan & Le's EfficientNet EMA):

    decay(n) = min(decay, 1 - (1 + n / gamma) ** -power)

so the average follows the raw weights closely at first and settles at ``decay`` later (with
timm's defaults ``gamma = 1``, ``power = 2/3``: 0.90 after 30 updates, 0.99 after 1,000,
0.999 after about 31,600). :class:`WarmupEMAWeightAveraging` is Lightning's
``EMAWeightAveraging`` with that decay; :func:`warmup_ema_decay` is the formula.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor

__all__ = ["WarmupEMAWeightAveraging", "warmup_ema_decay"]


def warmup_ema_decay(updates: int | float, decay: float, gamma: float = 1.0, power: float = 2 / 3) -> float:
    """The decay of the ``updates``-th update (0-based): ``min(decay, 1 - (1 + updates / gamma) ** -power)``."""
    return min(decay, 1.0 - (1.0 + updates / gamma) ** -power)


class _WarmupEMA:
    """``AveragedModel``'s ``multi_avg_fn``: one EMA step, with the warm-up decay of update
    ``num_averaged``, over a group of tensors of one device and dtype.

    A class holding numbers (not a closure), so the callback stays picklable; the decay is read
    once per group (one host sync), not once per tensor.
    """

    def __init__(self, decay: float, gamma: float, power: float) -> None:
        self.decay, self.gamma, self.power = decay, gamma, power

    def __call__(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        if not averaged:
            return
        if not averaged[0].is_floating_point():  # counters (BatchNorm's num_batches_tracked): the model's own
            torch._foreach_copy_(averaged, current)
            return
        decay = warmup_ema_decay(int(num_averaged), self.decay, self.gamma, self.power)
        torch._foreach_lerp_(averaged, current, 1.0 - decay)


class WarmupEMAWeightAveraging(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose decay warms up with the number of updates (see the module docstring).

    ``AveragedModel`` counts its updates in its ``n_averaged`` buffer, which checkpoints keep, so a
    resumed run continues the warm-up where it stopped.

    Args:
        decay: the decay reached once warmed up (0 < decay < 1).
        warmup_gamma: updates scale of the warm-up (larger: slower warm-up).
        warmup_power: exponent of the warm-up (timm's 2/3; 3/4 for very long runs).
        **kwargs: ``EMAWeightAveraging``'s other arguments (``device``, ``use_buffers``,
            ``update_every_n_steps``, ``update_starting_at_step``, ``update_starting_at_epoch``).
    """

    def __init__(self, decay: float = 0.999, warmup_gamma: float = 1.0, warmup_power: float = 2 / 3,
                 **kwargs: Any) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        if warmup_gamma <= 0 or warmup_power <= 0:
            raise ValueError(f"warmup_gamma and warmup_power must be positive, got {warmup_gamma!r}, {warmup_power!r}")
        super().__init__(decay=decay, **kwargs)
        self.decay, self.warmup_gamma, self.warmup_power = decay, warmup_gamma, warmup_power
        # EMAWeightAveraging hands AveragedModel a fixed-decay avg_fn: replace it with the warm-up one.
        self._kwargs.pop("avg_fn", None)
        self._kwargs["multi_avg_fn"] = _WarmupEMA(decay, warmup_gamma, warmup_power)

    def describe(self) -> str:
        """The averaging in words, for model cards."""
        return (f"EMA of the weights for validation, test and export (decay {self.decay:g}, warmed up as "
                f"min(decay, 1 - (1 + n/{self.warmup_gamma:g})^-{self.warmup_power:.3g}) over the n updates)")
