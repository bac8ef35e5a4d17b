"""The paper's optimisation recipe: parameter groups and the per-step learning-rate schedule.

ConvNeXt-dcls trains with AdamW where

- DCLS positions ``P`` (and Gaussian/triangle widths ``SIG``) run at ``position_lr_scale`` (5x) the
  learning rate, without weight decay, following the same warmup + cosine shape;
- norms, biases and other 1-D parameters have no weight decay;
- everything else decays with the optimizer's ``weight_decay``.

The schedule is linear warmup from 0 then cosine down to ``min_lr_ratio`` of each group's peak,
stepped after every optimizer step.

One convention for the positions' faster rate, timm's: every group's ``lr`` is the base rate and
its ``lr_scale`` the multiplier a scheduler applies (timm's schedulers do ``lr = value *
lr_scale``; :func:`warmup_cosine_scheduler` does the same), so any of them trains positions at
``position_lr_scale`` times the base rate, never at its square.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dcls_zoo.positions import position_parameters

__all__ = ["WarmupCosine", "parameter_groups", "upgrade_scheduler_state", "warmup_cosine_scheduler"]


def parameter_groups(model: nn.Module, position_lr_scale: float = 5.0) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into the recipe's named groups.

    Returns up to three groups (empty ones are left out), each with a ``name`` (shown by
    ``LearningRateMonitor``) and an ``lr_scale`` that the scheduler applies to the optimizer's
    base ``lr`` (the groups set no ``lr`` of their own):

    - ``decay``: weights of convs and linears (optimizer's weight decay, ``lr_scale`` 1);
    - ``no_decay``: 1-D parameters and biases (``weight_decay`` 0, ``lr_scale`` 1);
    - ``positions``: DCLS ``P``/``SIG`` (``weight_decay`` 0, ``lr_scale`` ``position_lr_scale``).

    Positions are found by identity (:func:`dcls_zoo.positions.position_parameters`), not by
    name. A tensor shared by several layers (positions shared per stage) appears once.
    """
    if position_lr_scale <= 0:
        raise ValueError(f"position_lr_scale must be positive, got {position_lr_scale}")
    position_ids = {id(t) for t in position_parameters(model)}
    decay, no_decay, positions = [], [], []
    for name, parameter in model.named_parameters():  # deduplicates shared tensors
        if not parameter.requires_grad:
            continue
        if id(parameter) in position_ids:
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


class WarmupCosine:
    """``LambdaLR`` factor: linear warmup from 0 over ``warmup_steps``, then cosine to ``min_ratio``.

    Multiplied by ``lr_scale`` (one factor per parameter group, see
    :func:`warmup_cosine_scheduler`), so the positions' 5x survives the whole schedule. A plain
    class holding numbers only (not a closure), so ``LambdaLR.state_dict`` stays loadable with
    ``weights_only=True`` and schedulers picklable for ``ddp_spawn``.

    Args:
        warmup_steps: optimizer steps of the warmup (0: none).
        total_steps: optimizer steps of the whole run (warmup included).
        min_ratio: factor at the last step, relative to the peak.
        lr_scale: the group's multiplier of the base rate.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0, lr_scale: float = 1.0) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        self.warmup_steps, self.total_steps, self.min_ratio = int(warmup_steps), int(total_steps), float(min_ratio)
        self.lr_scale = float(lr_scale)

    def scaled(self, lr_scale: float) -> WarmupCosine:
        """The same schedule for a group whose rate is ``lr_scale`` times the base rate."""
        return WarmupCosine(self.warmup_steps, self.total_steps, self.min_ratio, lr_scale)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr_scale * (step + 1) / (self.warmup_steps + 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.lr_scale * (self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))



def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupCosine) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's per-step scheduler: each group at ``base lr * lr_scale * schedule(step)``."""
    factors = [schedule.scaled(group.get("lr_scale", 1.0)) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def upgrade_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """A ``LambdaLR`` state saved before :class:`WarmupCosine` carried ``lr_scale``, made to resume right.

    Those runs multiplied each group's ``lr`` by its ``lr_scale`` once, so their saved base rates
    already hold it: their factors get ``lr_scale`` 1 (without this, positions would resume at
    25x). Other states are returned unchanged.
    """
    for factor in state.get("lr_lambdas") or []:
        if isinstance(factor, dict) and "warmup_steps" in factor and "lr_scale" not in factor:
            factor["lr_scale"] = 1.0
    return state
