"""How far training moved a network's DCLS positions from where they started.

A run keeps the positions its network started from (:func:`position_snapshot`, taken when the
network is built or its pretrained weights loaded) and saves them in every checkpoint under
:data:`INITIAL_POSITIONS_KEY`, so a resumed run still measures from the true start, not from
the checkpoint it resumed. :func:`mean_position_shift` gives, per position group (named as
:func:`~lightning_modules.position_monitor.position_groups` names them: ``stages.0`` ... for
positions shared per stage), the mean of ``|P_now - P_initial|`` over every element and axis,
in pixels of the dilated window: the same measure ``PositionMonitor`` plots as a speed per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .position_monitor import position_groups

__all__ = ["INITIAL_POSITIONS_KEY", "mean_position_shift", "position_snapshot"]

#: Checkpoint key of ``{group name: initial P}`` (float32 CPU tensors: a weights-only load reads them).
INITIAL_POSITIONS_KEY = "dcls_zoo_initial_positions"


@torch.no_grad()
def position_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """``{group name: P}`` of every distinct position tensor of ``model``: float32 copies on the
    CPU, shape ``(d, ...)`` as the holder's ``P``. Empty for a network without DCLS layers."""
    return {group.name: group.P.detach().float().cpu().clone() for group in position_groups(model)}


@torch.no_grad()
def mean_position_shift(initial: Mapping[str, Tensor], model: nn.Module) -> dict[str, float]:
    """``{group name: mean |P_now - P_initial|}`` in pixels, for the groups of ``model``.

    Args:
        initial: :func:`position_snapshot` of the network when training started.
        model: the network now (e.g. with the tested, averaged weights loaded).

    Raises:
        ValueError: a group of ``model`` has no initial positions, or they differ in shape
            (the snapshot is of another network).
    """
    shifts = {}
    for name, now in position_snapshot(model).items():
        start = initial.get(name)
        if start is None or tuple(start.shape) != tuple(now.shape):
            found = "no entry" if start is None else f"shape {tuple(start.shape)}"
            raise ValueError(f"initial positions: group {name!r} has {found}, the network's P has shape "
                             f"{tuple(now.shape)}; the snapshot is of another network")
        shifts[name] = float((now - start.float()).abs().mean())
    return shifts
