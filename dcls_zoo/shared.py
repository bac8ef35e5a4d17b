"""Positions (and widths) shared by several DCLS layers, e.g. every block of a ConvNeXt stage.

A :class:`SharedPositions` module owns ``P`` (and ``SIG``) once, so ``state_dict()`` holds one
tensor per group (safetensors and strict loading work unchanged) and the optimizer updates it once
per step; autograd sums the gradients of every layer that uses it. The layers keep a plain
reference to it, outside the module tree. The groups of a model live in a
:class:`SharedPositionsDict` registered on their owner module under :data:`SHARED_ATTRIBUTE`.

The per-axis footprints are built once per forward of the group: the first layer to ask builds
them and the others reuse them, until a layer asks a second time (the next forward), the
positions change, the grad mode changes or a backward pass has gone through them (and never
inside activation checkpointing, whose recomputation must repeat the forward exactly). No hook
is needed, so scripted, traced and exported models see plain modules.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .backends import is_compiling
from .construct import (
    Footprints,
    Interpolation,
    axis_footprints,
    clamp_positions_,
    init_positions_,
    resolve_interpolation,
)

__all__ = ["SHARED_ATTRIBUTE", "SharedPositions", "SharedPositionsDict"]


def _saving_through_hooks() -> bool:
    """Whether saved-tensor hooks are active (activation checkpointing, CPU offloading).

    A checkpointed block is recomputed during backward and must save the same tensors as in
    its forward, so inside one no footprints are reused: every layer builds its own.
    """
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None

# The attribute under which a model keeps its shared position groups: ``<owner>.dcls_shared.<role>``.
SHARED_ATTRIBUTE = "dcls_shared"

class _CachedFootprints(NamedTuple):
    footprints: Footprints
    users: set[int]  # id() of the layers that took them
    key: tuple  # what they were built from and under: parameter versions, grad and inference mode


class _FootprintCache:
    """Holds the group's last footprints; copies and pickles start empty (they may hold a graph)."""

    def __init__(self) -> None:
        self.entry: _CachedFootprints | None = None

    def forget(self, built: weakref.ref) -> None:
        if self.entry is not None and self.entry.footprints is built():
            self.entry = None

    def __deepcopy__(self, memo: dict) -> _FootprintCache:
        return _FootprintCache()

    def __getstate__(self) -> dict:
        return {"entry": None}


class _Forget:
    """Backward pre-hook: drops the cached footprints it was made for (weak references only)."""

    def __init__(self, cache: _FootprintCache, footprints: Footprints) -> None:
        self.cache, self.footprints = weakref.ref(cache), weakref.ref(footprints)

    def __call__(self, grad_outputs: tuple) -> None:
        cache = self.cache()
        if cache is not None:
            cache.forget(self.footprints)


class SharedPositions(nn.Module):
    """``P`` (and ``SIG``) of shape ``(d, *element_shape)`` shared by a group of DCLS layers.

    Args:
        element_shape: ``(C_out, C_in / groups, *dense, K)``, the layers' ``weight`` shape; use
            size 1 for dimensions the positions do not vary along (ConvNeXt-dcls: ``(C, 1, K)``).
        learned_kernel_size: window sizes along the learned axes (``d`` of them).
        version: the interpolation (see :func:`dcls_zoo.construct.resolve_interpolation`).
    """

    def __init__(
        self,
        element_shape: Sequence[int],
        learned_kernel_size: Sequence[int],
        version: str | Interpolation = "gauss",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.learned_kernel_size = tuple(learned_kernel_size)
        self.interpolation = resolve_interpolation(version)
        shape = (len(self.learned_kernel_size), *element_shape)
        self.P = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if self.interpolation.has_sigma:
            self.SIG = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        else:
            self.register_parameter("SIG", None)
        self._footprint_cache = _FootprintCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``P ~ N(0, 0.5)`` clamped into the window; ``SIG`` at the interpolation's initial value."""
        init_positions_(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    @torch.no_grad()
    def clamp_positions_(self) -> None:
        """Clamp ``P`` in place so every element's centre lies inside the window."""
        clamp_positions_(self.P, self.learned_kernel_size)

    def footprints(self, user: nn.Module | None = None) -> Footprints:
        """The footprints of ``P`` (and ``SIG``), built once per forward of the group.

        Args:
            user: the layer asking (``None``: build afresh). A layer that asks again marks a
                new forward, so the footprints are rebuilt.
        """
        if user is None or is_compiling() or (torch.is_grad_enabled() and _saving_through_hooks()):
            return self._build()
        key = (
            self.P._version, self.P.data_ptr(), None if self.SIG is None else (self.SIG._version, self.SIG.data_ptr()),
            torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
        )
        # setdefault: SharedPositions pickled by versions without this cache load too
        cache = self.__dict__.setdefault("_footprint_cache", _FootprintCache())
        entry = cache.entry
        if entry is not None and entry.key == key and id(user) not in entry.users:
            entry.users.add(id(user))
            return entry.footprints
        footprints = self._build()
        cache.entry = _CachedFootprints(footprints, {id(user)}, key)
        graph = footprints.graph_node()
        if graph is not None:
            # Once a backward pass has run through them their graph is freed: never hand them
            # out again. Weak references only: the node must not keep its own footprints alive.
            graph.register_prehook(_Forget(cache, footprints))
        return footprints

    def _build(self) -> Footprints:
        return axis_footprints(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    def extra_repr(self) -> str:
        return (
            f"positions={tuple(self.P.shape)}, dilated_kernel_size={self.learned_kernel_size}, "
            f"version={self.interpolation.name!r}"
        )


class SharedPositionsDict(nn.ModuleDict):
    """The container registered on an owner module as :data:`SHARED_ATTRIBUTE`: role -> :class:`SharedPositions`.

    Its forward is the identity because an owner is often an ``nn.Sequential`` (timm's ResNet
    ``layer1``...), whose forward calls every child in order, this container included; a plain
    ``nn.ModuleDict`` there raises ``NotImplementedError``. As the last child it passes the last
    block's output through unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fuse(self) -> nn.Module:
        """After the layers are fused the positions are no longer used (``timm.utils.reparameterize_model``)."""
        return nn.Identity()
