"""Positions (and widths) shared by several DCLS layers, e.g. every block of a ConvNeXt stage.

A :class:`SharedPositions` module owns ``P`` (and ``SIG``) once, so ``state_dict()`` holds one
tensor per group (safetensors and strict loading work unchanged) and the optimizer updates it once
per step; autograd sums the gradients of every layer that uses it. The layers keep a plain
reference to it, outside the module tree.

The per-axis footprints are built once per forward of the group's owner module: a forward
pre-hook on the owner opens a scope in which the first layer's footprints are reused by the
others, and a forward hook closes it (so no graph outlives the forward that built it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .construct import (
    Footprints,
    Interpolation,
    axis_footprints,
    clamp_positions_,
    init_positions_,
    resolve_interpolation,
)

__all__ = ["SharedPositions"]


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
        self._scope_open = False
        self._cached: Footprints | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``P ~ N(0, 0.5)`` clamped into the window; ``SIG`` at the interpolation's initial value."""
        init_positions_(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    @torch.no_grad()
    def clamp_positions_(self) -> None:
        """Clamp ``P`` in place so every element's centre lies inside the window."""
        clamp_positions_(self.P, self.learned_kernel_size)

    def footprints(self) -> Footprints:
        """The footprints of ``P`` (and ``SIG``), built once per owner forward."""
        if self._cached is not None:
            return self._cached
        footprints = axis_footprints(self.P, self.SIG, self.learned_kernel_size, self.interpolation)
        if self._scope_open:
            self._cached = footprints
        return footprints

    def attach_to(self, owner: nn.Module) -> None:
        """Build the footprints once per ``owner`` forward (hooks survive ``copy.deepcopy``)."""
        owner.register_forward_pre_hook(self._open_scope)
        owner.register_forward_hook(self._close_scope, always_call=True)

    def detach_from(self, owner: nn.Module) -> None:
        """Remove the hooks :meth:`attach_to` put on ``owner`` (also on a deep copy of it)."""
        for hooks in (owner._forward_pre_hooks, owner._forward_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is self:
                    del hooks[key]
                    owner._forward_hooks_always_called.pop(key, None)

    def _open_scope(self, module: nn.Module, args: tuple) -> None:
        self._scope_open, self._cached = True, None

    def _close_scope(self, module: nn.Module, args: tuple, output: object) -> None:
        self._scope_open, self._cached = False, None

    def extra_repr(self) -> str:
        return (
            f"positions={tuple(self.P.shape)}, dilated_kernel_size={self.learned_kernel_size}, "
            f"version={self.interpolation.name!r}"
        )
