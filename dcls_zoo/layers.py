"""DCLS convolution layers: drop-in replacements for ``nn.Conv1d/2d/3d`` with learnable spacings.

AXIS CONVENTION (differs from the official ``dcls`` package for 2D/3D v1, "max" and "gauss"):
``P[i]`` is the position along kernel axis ``i`` in PyTorch's order. In 2D, ``P[0]`` moves an
element along the rows (height) and ``P[1]`` along the columns (width). Positions are centred:
``P[i] = 0`` is index ``dilated_kernel_size[i] // 2``. The official 2D v1/max/gauss layers
store the width first (``ours = official.flip(0)``); the official "v0" uses our order.
:mod:`dcls_zoo.weights.official` maps the authors' checkpoints between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.fx
from torch import Tensor, nn

from .backends import _check_name as _check_backend
from .construct import Footprints, Interpolation, axis_footprints, clamp_positions_, init_positions_
from .functional import (
    DclsGeometry,
    KernelCache,
    as_int,
    as_int_tuple,
    dcls_conv,
    dcls_geometry,
    dcls_kernel,
    prepared_kernel,
)
from .scripting import dcls_conv_scripted
from .shared import ALIAS_ATTRIBUTE, SharedPositions

__all__ = ["DclsConvNd", "Dcls1d", "Dcls2d", "Dcls3d"]

# A leaf of torch.fx graphs: symbolic tracing records one dcls_conv call per layer.
torch.fx.wrap("dcls_conv")


_CONV_BY_DIMS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _is_fx_tracing() -> bool:
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


class DclsConvNd(nn.Module):
    """Base of :class:`Dcls1d`, :class:`Dcls2d` and :class:`Dcls3d` (``spatial_dims`` axes).

    Parameters (official names and shapes, with ``D`` the dense sizes of the axes without
    learned positions, usually none):
        weight: ``(C_out, C_in / groups, *D, kernel_count)``
        P: ``(len(learned_axes), C_out, C_in / groups, *D, kernel_count)``, centred positions
        SIG: same shape as ``P`` (triangle and gauss only), effective width
            ``|SIG| + 1`` (triangle) or ``|SIG| + 0.27`` (gauss)
        bias: ``(C_out,)`` or ``None``

    The forward is one :func:`~dcls_zoo.functional.dcls_conv` call. Where no gradient can reach
    the parameters (``no_grad``, ``inference_mode``, frozen parameters) the kernel is built once
    and reused while the parameters are exactly the same (:class:`~dcls_zoo.functional.KernelCache`).
    """

    spatial_dims: int
    # TorchScript compiles properties; this one reads Python state the scripted layer does not need.
    __jit_unused_properties__ = ["_padding_pairs"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        dilated_kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str | Interpolation = "gauss",
        learned_axes: Sequence[int] | None = None,
        shared_positions: SharedPositions | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dims = self.spatial_dims
        self.in_channels = as_int(in_channels, "in_channels")
        self.out_channels = as_int(out_channels, "out_channels")
        self.groups = as_int(groups, "groups")
        for name, channels in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if channels % self.groups:
                raise ValueError(f"{name}={channels} is not divisible by groups={self.groups}")
        self.kernel_count = as_int(kernel_count, "kernel_count")
        geometry = dcls_geometry(dims, dilated_kernel_size, stride, padding, self.groups, padding_mode, version,
                                 learned_axes)
        self.dilated_kernel_size = geometry.window
        self.stride = geometry.stride
        self.padding = padding if isinstance(padding, str) else as_int_tuple(padding, dims, "padding", 0)
        self.padding_mode = padding_mode
        self.backend = _check_backend(backend)
        self.interpolation = geometry.interpolation
        self.version = self.interpolation.name
        self.learned_axes = geometry.learned_axes
        self.dense_kernel_size = geometry.dense_window
        self.learned_kernel_size = geometry.learned_window
        self._kernel_cache = KernelCache()

        factory = {"device": device, "dtype": dtype}
        element_shape = (self.out_channels, self.in_channels // self.groups, *self.dense_kernel_size, self.kernel_count)
        self.weight = nn.Parameter(torch.empty(element_shape, **factory))
        if shared_positions is not None:
            self._check_shared(shared_positions, element_shape)
            # A submodule (an alias of the group's canonical registration on its stage): whatever
            # holds the layer holds its positions, e.g. a GraphModule that copied the layer.
            self.register_module(ALIAS_ATTRIBUTE, shared_positions)
        else:
            self.register_module(ALIAS_ATTRIBUTE, None)
            self.P = nn.Parameter(torch.empty(len(self.learned_axes), *element_shape, **factory))
            if self.interpolation.has_sigma:
                self.SIG = nn.Parameter(torch.empty(len(self.learned_axes), *element_shape, **factory))
            else:
                self.register_parameter("SIG", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _check_shared(self, shared: SharedPositions, element_shape: tuple[int, ...]) -> None:
        if not isinstance(shared, SharedPositions):
            raise TypeError(f"shared_positions must be a SharedPositions, got {type(shared).__name__}")
        problems = []
        if shared.learned_kernel_size != self.learned_kernel_size:
            problems.append(f"window {shared.learned_kernel_size} != {self.learned_kernel_size}")
        if shared.interpolation.name != self.interpolation.name:
            problems.append(f"version {shared.interpolation.name!r} != {self.interpolation.name!r}")
        try:
            if torch.broadcast_shapes(shared.P.shape[1:], element_shape) != element_shape:
                raise RuntimeError
        except RuntimeError:
            problems.append(f"positions {tuple(shared.P.shape[1:])} do not broadcast to weight {element_shape}")
        if problems:
            raise ValueError(f"shared_positions do not fit this layer: {'; '.join(problems)}")

    def __getattr__(self, name: str):
        # P and SIG of a layer with shared positions are the group's (registered in its submodule).
        if name in ("P", "SIG"):
            shared = self.__dict__.get("_modules", {}).get(ALIAS_ATTRIBUTE)
            if shared is not None:
                return getattr(shared, name)
        return super().__getattr__(name)

    def __setstate__(self, state: dict) -> None:
        # Layers pickled before the group became a submodule kept it in __dict__.
        shared = state.pop("_shared_positions", None)
        super().__setstate__(state)
        self._modules.setdefault(ALIAS_ATTRIBUTE, shared)

    def reset_parameters(self) -> None:
        """Initialise as the official layers: kaiming-uniform weights, ``P ~ N(0, 0.5)`` clamped.

        Shared positions are initialised by their :class:`SharedPositions`, not here.
        """
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.shared_positions is None:
            init_positions_(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    @torch.no_grad()
    def clamp_positions_(self) -> None:
        """Clamp ``P`` (this layer's or the shared one) in place so every element stays in the window."""
        clamp_positions_(self.P, self.learned_kernel_size)

    def footprints(self) -> Footprints:
        """The elements' per-axis footprints (built once per forward when positions are shared)."""
        if self.shared_positions is not None:
            return self.shared_positions.footprints(self)
        return axis_footprints(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    def kernel(self, footprints: Footprints | None = None) -> Tensor:
        """The dense kernel ``(C_out, C_in / groups, *dilated_kernel_size)``, differentiable."""
        return dcls_kernel(self.weight, self.P, self.SIG, self.dilated_kernel_size, self.interpolation,
                           self.learned_axes, footprints=footprints if footprints is not None else self.footprints())

    def _geometry(self) -> DclsGeometry:
        """The layer's arguments, checked and normalised (from its attributes as they are now)."""
        return dcls_geometry(self.spatial_dims, self.dilated_kernel_size, self.stride, self.padding, self.groups,
                             self.padding_mode, self.interpolation, self.learned_axes)

    @property
    def _padding_pairs(self) -> tuple[tuple[int, int], ...]:
        """``(before, after)`` padding per axis."""
        return self._geometry().padding

    def _kernel_and_padding(self) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
        """The kernel as the backend convolves it (on the CPU cropped to the taps the elements
        reach, :func:`~dcls_zoo.backends.crop_to_support`) and its ``(before, after)`` padding."""
        return prepared_kernel(self.weight, self.P, self.SIG, self._geometry(), self.footprints(), self.weight.dtype)

    def __prepare_scriptable__(self) -> DclsConvNd:
        # torch.jit.script calls this first: plain attributes the compiled forward reads (the
        # positions of a shared group live outside this module, so TorchScript cannot find them).
        self.__dict__.update(
            _script_P=self.P,
            _script_SIG=self.SIG,
            _script_window=list(self.dilated_kernel_size),
            _script_stride=list(self.stride),
            _script_padding=[amount for pair in self._padding_pairs for amount in pair],
            _script_learned_axes=list(self.learned_axes),
        )
        return self

    def forward(self, input: Tensor) -> Tensor:
        """``(N, C_in, *spatial)`` or ``(C_in, *spatial)`` -> ``(N, C_out, *spatial_out)``."""
        if torch.jit.is_scripting():
            return dcls_conv_scripted(
                input, self.weight, self._script_P, self._script_SIG, self.bias, self._script_window,
                self._script_stride, self._script_padding, self.groups, self.padding_mode, self.version,
                self._script_learned_axes, self.backend,
            )
        # An FX graph records the call's arguments: names and tensors only, no Python objects.
        tracing = _is_fx_tracing()
        return dcls_conv(
            input, self.weight, self.P, self.SIG, self.dilated_kernel_size, self.bias, self.stride, self.padding,
            self.groups, self.padding_mode, self.version if tracing else self.interpolation, self.learned_axes,
            self.backend,
            footprints=None if tracing or self.shared_positions is None else self.footprints,
            cache=None if tracing else self.__dict__.setdefault("_kernel_cache", KernelCache()),
        )

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The equivalent plain ``nn.ConvNd`` holding the dense kernel (same padding, stride,
        groups, bias, padding mode, device, dtype and mode); timm's ``reparameterize_model``
        calls this."""
        conv = _CONV_BY_DIMS[self.spatial_dims](
            self.in_channels, self.out_channels, self.dilated_kernel_size, stride=self.stride, padding=self.padding,
            groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        conv.weight.copy_(self.kernel())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
            f"dilated_kernel_size={self.dilated_kernel_size}, version={self.version!r}"
        )
        if self.learned_axes != tuple(range(self.spatial_dims)):
            text += f", learned_axes={self.learned_axes}"
        if self.stride != (1,) * self.spatial_dims:
            text += f", stride={self.stride}"
        if self.padding != (0,) * self.spatial_dims:
            text += f", padding={self.padding!r}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


class Dcls1d(DclsConvNd):
    """1D DCLS convolution (e.g. learnable delays), input ``(N, C_in, L)``.

    Args:
        in_channels, out_channels, stride, groups, bias, padding_mode: as ``nn.Conv1d``.
        kernel_count: number of elements ``K`` per (output, input) channel pair.
        dilated_kernel_size: window size ``s`` the elements move in.
        padding: int, tuple, ``"same"`` or ``"valid"``.
        version: ``"gauss"`` (default), ``"triangle"`` (``"max"``), ``"bilinear"`` (``"v0"``, ``"v1"``).
        learned_axes: kernel axes with learned positions (default: all).
        shared_positions: a :class:`~dcls_zoo.shared.SharedPositions` to take ``P``/``SIG`` from
            instead of owning them (positions shared by a stage); registered as the submodule
            ``shared_positions`` (``None`` for a layer that owns its positions).
        backend: convolution backend, ``"auto"`` (chosen per call) or a name in
            :data:`dcls_zoo.backends.BACKENDS`.
    """

    spatial_dims = 1


class Dcls2d(DclsConvNd):
    """2D DCLS convolution, input ``(N, C_in, H, W)``; ``P[0]`` is the row (H) position.

    Arguments as :class:`Dcls1d`, with pairs for the per-axis ones. ``learned_axes=(1,)`` with
    ``dilated_kernel_size=(3, 25)`` learns positions along the width only, with a dense size-3
    kernel along the height.
    """

    spatial_dims = 2


class Dcls3d(DclsConvNd):
    """3D DCLS convolution, input ``(N, C_in, D, H, W)``; ``P[i]`` along kernel axis ``i``.

    Arguments as :class:`Dcls1d`, with triples for the per-axis ones. ``learned_axes=(0,)`` with
    ``dilated_kernel_size=(25, 3, 3)`` gives learnable delays along time (axis 0) with a dense
    3x3 spatial kernel (the official ``Dcls3_1d`` use case, but with time first).
    """

    spatial_dims = 3

