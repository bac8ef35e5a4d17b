"""Where a model's DCLS positions are, and what to do with all of them at once.

Everything that needs "the positions of this model" asks here: the clamp after each optimizer
step, the spread used by benchmarks, the repulsive loss, the optimizer's position group, the
model card, the position plots and the authors' checkpoint converter. One rule finds them: a
position holder is a :class:`~dcls_zoo.shared.SharedPositions` (one ``P``/``SIG`` for a group
of layers) or a DCLS layer with its own; a parameter is a position by identity (it is a
holder's ``P`` or ``SIG``), never by its name.

Stages are named by module path: the first path component that names one (``stages.2``,
``stage2``, ``layer3``, ``levels.1``); a layer's role in its stage is the path after the block
index (``conv_dw``, ``conv2``). Shared groups are registered as
``<stage>.dcls_shared.<role>`` (:data:`~dcls_zoo.shared.SHARED_ATTRIBUTE`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .construct import position_bounds
from .layers import DclsConvNd
from .shared import SharedPositions

__all__ = [
    "PositionOwner",
    "clamp_model_positions_",
    "dcls_layers",
    "mean_position_shift",
    "position_owners",
    "position_parameters",
    "position_snapshot",
    "role_in_stage",
    "shared_group_key",
    "spread_model_positions_",
    "stage_of",
]

# A stage is the first path component that names one: "stages.2", "stage2", "layer3", "levels.1".
_STAGE_PATTERN = re.compile(r"^(.*?(?:^|\.)(?:stages?|layers?|levels?)\.?\d+)(?:\.|$)")


def stage_of(path: str) -> str | None:
    """The stage prefix of a module path (``"stages.1.blocks.0.conv_dw"`` -> ``"stages.1"``), or None."""
    match = _STAGE_PATTERN.match(path)
    return match.group(1) if match else None


def role_in_stage(path: str, stage: str) -> str:
    """A module's place inside its block: the path after the stage's block index, dots -> ``_``
    (``"stages.1.blocks.0.conv_dw"`` in ``"stages.1"`` -> ``"conv_dw"``)."""
    parts = path[len(stage) + 1 :].split(".") if stage else path.split(".")
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    inner = parts[numeric[0] + 1 :] if numeric else parts
    return "_".join(inner) or "conv"


def shared_group_key(layer_path: str) -> tuple[str, str] | None:
    """``(owner path, role)`` of the group a layer at ``layer_path`` shares positions with when
    groups are per stage, or ``None`` outside any stage. Its positions live at
    ``f"{owner}.{SHARED_ATTRIBUTE}.{role}.P"``."""
    stage = stage_of(layer_path)
    return None if stage is None else (stage, role_in_stage(layer_path, stage))


def dcls_layers(model: nn.Module) -> list[tuple[str, DclsConvNd]]:
    """Every DCLS layer of ``model`` with its path."""
    return [(path, m) for path, m in model.named_modules() if isinstance(m, DclsConvNd)]


class PositionOwner(NamedTuple):
    """A holder of positions: a :class:`~dcls_zoo.shared.SharedPositions` or a DCLS layer with its own.

    Attributes:
        name: what plots, logs and cards call it: its stage (``"stages.0"``, ``"layer3"``) when the
            stage holds only this group, else its module path.
        path: module path of the holder.
        owner: the holder itself (it has ``P``, ``SIG`` and ``learned_kernel_size``).
        layers: the DCLS layers whose kernels use these positions.
    """

    name: str
    path: str
    owner: SharedPositions | DclsConvNd
    layers: tuple[DclsConvNd, ...]

    @property
    def P(self) -> Tensor:
        """The positions ``(d, *element_shape)``."""
        return self.owner.P

    @property
    def SIG(self) -> Tensor | None:
        """The widths (same shape as ``P``), or ``None`` for bilinear elements."""
        return self.owner.SIG

    @property
    def window(self) -> tuple[int, ...]:
        """The window sizes along the axes ``P`` moves in (``P[i]`` along ``window[i]``)."""
        return tuple(self.owner.learned_kernel_size)


def position_owners(model: nn.Module) -> list[PositionOwner]:
    """Every distinct holder of positions of ``model`` once, in module order.

    A shared holder is named by its canonical path (``stages.0.dcls_shared.conv_dw``), or where
    first met when the module holds no owner of it (a ``GraphModule`` that copied the layers).
    """
    paths = {id(module): path for path, module in model.named_modules()}
    found: dict[int, tuple[str, SharedPositions | DclsConvNd, list[DclsConvNd]]] = {}
    for path, layer in dcls_layers(model):
        owner = layer.shared_positions if layer.shared_positions is not None else layer
        found.setdefault(id(owner), (paths.get(id(owner), path), owner, []))[2].append(layer)
    stages = [stage_of(path) or path for path, _, _ in found.values()]
    return [
        PositionOwner(stage if stages.count(stage) == 1 else path, path, owner, tuple(layers))
        for (path, owner, layers), stage in zip(found.values(), stages)
    ]


def position_parameters(model: nn.Module) -> list[Tensor]:
    """``model``'s DCLS positions and widths (every ``P`` and ``SIG``), each tensor once."""
    tensors = []
    for holder in position_owners(model):
        tensors += [t for t in (holder.P, holder.SIG) if t is not None]
    return tensors


def clamp_model_positions_(model: nn.Module) -> None:
    """Clamp every position tensor of ``model`` (own and shared) into its window, in place."""
    for holder in position_owners(model):
        holder.owner.clamp_positions_()


@torch.no_grad()
def spread_model_positions_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Draw every position of ``model`` uniformly over its window, in place.

    Trained ConvNeXt-dcls positions cover the whole window, while freshly initialised ones
    (``N(0, 0.5)``) stay near its centre, where the CPU layers skip the unreached taps. Benchmarks
    and MAC counts use this to see the cost of a trained model.
    """
    for holder in position_owners(model):
        positions = holder.owner.P
        if positions.is_meta:  # a meta build holds no values to draw (init_weights draws them later)
            continue
        # drawn where the generator lives (the CPU's default one without a generator), copied over
        device = generator.device if generator is not None else torch.device("cpu")
        for axis, window in enumerate(holder.owner.learned_kernel_size):
            low, high = position_bounds(window)
            values = torch.rand(positions[axis].shape, generator=generator, dtype=positions.dtype, device=device)
            positions[axis].copy_(values * (high - low) + low)


@torch.no_grad()
def position_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """``{group name: P}`` of every distinct position tensor of ``model``: float32 copies on the
    CPU, shape ``(d, ...)`` as the holder's ``P``. Empty for a network without DCLS layers."""
    return {group.name: group.P.detach().float().cpu().clone() for group in position_owners(model)}


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
