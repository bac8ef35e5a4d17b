"""The paper's optimisation recipe: parameter groups and the per-step learning-rate schedule.

ConvNeXt-dcls trains with AdamW where

- DCLS positions ``P`` (and Gaussian/triangle widths ``SIG``) run at ``position_lr_scale`` (5x) the
  learning rate, without weight decay, following the same warmup + cosine shape;
- norms, biases and other 1-D parameters have no weight decay;
- everything else decays with the optimizer's ``weight_decay``.

The schedule is linear warmup from 0 then cosine down to ``min_lr_ratio`` of each group's peak,
stepped after every optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["WarmupCosine", "is_position_parameter", "parameter_groups", "scale_group_learning_rates"]

POSITION_SUFFIXES = (".P", ".SIG")


def is_position_parameter(name: str) -> bool:
    """Whether a parameter name is a DCLS position (``P``) or width (``SIG``)."""
    return name in ("P", "SIG") or name.endswith(POSITION_SUFFIXES)


def parameter_groups(model: nn.Module, position_lr_scale: float = 5.0) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into the recipe's named groups.

    Returns up to three groups (empty ones are left out), each with a ``name`` (shown by
    ``LearningRateMonitor``) and an ``lr_scale`` for :func:`scale_group_learning_rates`:

    - ``decay``: weights of convs and linears (optimizer's weight decay, ``lr_scale`` 1);
    - ``no_decay``: 1-D parameters and biases (``weight_decay`` 0, ``lr_scale`` 1);
    - ``positions``: DCLS ``P``/``SIG`` (``weight_decay`` 0, ``lr_scale`` ``position_lr_scale``).

    A tensor shared by several layers (positions shared per stage) appears once.
    """
    if position_lr_scale <= 0:
        raise ValueError(f"position_lr_scale must be positive, got {position_lr_scale}")
    decay, no_decay, positions = [], [], []
    for name, parameter in model.named_parameters():  # deduplicates shared tensors
        if not parameter.requires_grad:
            continue
        if is_position_parameter(name):
            positions.append(parameter)
        elif parameter.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [
        {"name": "decay", "params": decay, "lr_scale": 1.0},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
        {"name": "positions", "params": positions, "weight_decay": 0.0, "lr_scale": float(position_lr_scale)},
    ]
    return [group for group in groups if group["params"]]


def scale_group_learning_rates(optimizer: torch.optim.Optimizer) -> None:
    """Multiply each group's ``lr`` by its ``lr_scale`` (once, before a scheduler records base rates)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


class WarmupCosine:
    """``LambdaLR`` factor: linear warmup from 0 over ``warmup_steps``, then cosine to ``min_ratio``.

    The factor multiplies each group's own peak rate, so the positions' 5x survives the whole
    schedule. A plain class (not a closure), so schedulers stay picklable for checkpoints and
    ``ddp_spawn``.

    Args:
        warmup_steps: optimizer steps of the warmup (0: none).
        total_steps: optimizer steps of the whole run (warmup included).
        min_ratio: factor at the last step, relative to the peak.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.warmup_steps, self.total_steps, self.min_ratio = int(warmup_steps), int(total_steps), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

