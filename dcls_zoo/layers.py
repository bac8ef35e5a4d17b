"""DCLS convolution layers: drop-in replacements for ``nn.Conv1d/2d/3d`` with learnable spacings.

AXIS CONVENTION (differs from the official ``dcls`` package for 2D/3D v1, "max" and "gauss"):
``P[i]`` is the position along kernel axis ``i`` in PyTorch's order. In 2D, ``P[0]`` moves an
element along the rows (height) and ``P[1]`` along the columns (width). Positions are centred:
``P[i] = 0`` is index ``dilated_kernel_size[i] // 2``. The official 2D v1/max/gauss layers
store the width first (``ours = official.flip(0)``); the official "v0" uses our order.
:mod:`dcls_zoo.convert` (model zoo) maps checkpoints between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backends import PADDING_MODES, convolve, crop_to_support
from .backends import _check_name as _check_backend
from .construct import (
    Footprints,
    Interpolation,
    axis_footprints,
    clamp_positions_,
    init_positions_,
    kernel_from_footprints,
    resolve_interpolation,
)
from .shared import SharedPositions

__all__ = ["Dcls1d", "Dcls2d", "Dcls3d"]


# torch.compiler.is_compiling appeared in torch 2.3; older versions cannot be compiling through it.
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int_tuple(value: object, dims: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as a ``dims``-tuple of ints ``>= minimum`` (an int is repeated)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != dims:
            raise ValueError(f"{name} must have {dims} entries (one per spatial axis), got {value!r}")
        return tuple(_positive_int(v, name, minimum) for v in value)
    return (_positive_int(value, name, minimum),) * dims


def _resolve_padding(
    padding: int | Sequence[int] | str,
    window: Sequence[int],
    stride: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` per axis for an int/tuple, ``"same"`` or ``"valid"`` padding."""
    if isinstance(padding, str):
        if padding == "valid":
            return tuple((0, 0) for _ in window)
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride 1, got stride={tuple(stride)}")
            # As nn.ConvNd: the extra pixel of an even window goes after.
            return tuple(((s - 1) // 2, (s - 1) - (s - 1) // 2) for s in window)
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    amounts = _int_tuple(padding, len(window), "padding", minimum=0)
    return tuple((p, p) for p in amounts)


class _DclsNd(nn.Module):
    """Base of :class:`Dcls1d`, :class:`Dcls2d` and :class:`Dcls3d` (``spatial_dims`` axes).

    Parameters (official names and shapes, with ``D`` the dense sizes of the axes without
    learned positions, usually none):
        weight: ``(C_out, C_in / groups, *D, kernel_count)``
        P: ``(len(learned_axes), C_out, C_in / groups, *D, kernel_count)``, centred positions
        SIG: same shape as ``P`` (triangle and gauss only), effective width
            ``|SIG| + 1`` (triangle) or ``|SIG| + 0.27`` (gauss)
        bias: ``(C_out,)`` or ``None``
    """

    spatial_dims: int

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
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups:
                raise ValueError(f"{name}={channels} is not divisible by groups={groups}")
        self.kernel_count = _positive_int(kernel_count, "kernel_count")
        self.dilated_kernel_size = _int_tuple(dilated_kernel_size, dims, "dilated_kernel_size")
        self.stride = _int_tuple(stride, dims, "stride")
        self.padding = padding if isinstance(padding, str) else _int_tuple(padding, dims, "padding", 0)
        self._padding_pairs = _resolve_padding(padding, self.dilated_kernel_size, self.stride)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.backend = _check_backend(backend)
        self.interpolation = resolve_interpolation(version)
        self.version = self.interpolation.name
        self.learned_axes = self._check_learned_axes(learned_axes)
        dense_axes = [a for a in range(dims) if a not in self.learned_axes]
        self.dense_kernel_size = tuple(self.dilated_kernel_size[a] for a in dense_axes)
        self.learned_kernel_size = tuple(self.dilated_kernel_size[a] for a in self.learned_axes)
        # kernel_from_footprints yields (C_out, C_in/g, *dense, *learned): permute to axis order.
        built_order = dense_axes + list(self.learned_axes)
        self._kernel_permutation = (0, 1, *(2 + built_order.index(a) for a in range(dims)))

        factory = {"device": device, "dtype": dtype}
        element_shape = (out_channels, in_channels // groups, *self.dense_kernel_size, kernel_count)
        self.weight = nn.Parameter(torch.empty(element_shape, **factory))
        if shared_positions is not None:
            self._check_shared(shared_positions, element_shape)
            # A plain reference, outside the module tree: the group's owner registers it once.
            self.__dict__["_shared_positions"] = shared_positions
        else:
            self.P = nn.Parameter(torch.empty(len(self.learned_axes), *element_shape, **factory))
            if self.interpolation.has_sigma:
                self.SIG = nn.Parameter(torch.empty(len(self.learned_axes), *element_shape, **factory))
            else:
                self.register_parameter("SIG", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _check_learned_axes(self, learned_axes: Sequence[int] | None) -> tuple[int, ...]:
        dims = self.spatial_dims
        if learned_axes is None:
            return tuple(range(dims))
        if isinstance(learned_axes, int) or not isinstance(learned_axes, Sequence):
            raise TypeError(f"learned_axes must be a sequence of axis indices, got {learned_axes!r}")
        axes = tuple(sorted(learned_axes))
        if not axes or len(set(axes)) != len(axes) or any(
            isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < dims for a in axes
        ):
            raise ValueError(
                f"learned_axes must be distinct kernel axes in [0, {dims}), got {tuple(learned_axes)!r}"
            )
        return axes

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

    @property
    def shared_positions(self) -> SharedPositions | None:
        """The :class:`SharedPositions` this layer uses, or ``None`` when it owns ``P``/``SIG``."""
        return self.__dict__.get("_shared_positions")

    def __getattr__(self, name: str):
        # P and SIG of a layer with shared positions are the group's (not registered here).
        if name in ("P", "SIG"):
            shared = self.__dict__.get("_shared_positions")
            if shared is not None:
                return getattr(shared, name)
        return super().__getattr__(name)

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
        """The elements' per-axis footprints (built once per owner forward when shared)."""
        if self.shared_positions is not None:
            return self.shared_positions.footprints()
        return axis_footprints(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    def kernel(self) -> Tensor:
        """The dense kernel ``(C_out, C_in / groups, *dilated_kernel_size)``."""
        return self._kernel_from(self.footprints())

    def _kernel_from(self, footprints: Footprints) -> Tensor:
        return kernel_from_footprints(self.weight, footprints).permute(self._kernel_permutation)

    def _kernel_and_padding(self) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
        """The kernel to convolve with and its ``(before, after)`` padding per axis.

        On the CPU the kernel is cropped to the box its elements reach (exact, see
        :func:`~dcls_zoo.backends.crop_to_support`): freshly initialised positions
        (``N(0, 0.5)``) reach about 7x7 of a 17x17 window. Finding the box reads the positions
        on the host, which on a GPU would stall the stream and break graph capture, so GPUs and
        ``torch.compile`` keep the whole window.
        """
        footprints = self.footprints()
        kernel = self._kernel_from(footprints)
        if kernel.device.type != "cpu" or _is_compiling():
            return kernel, self._padding_pairs
        learned = dict(zip(self.learned_axes, footprints.support()))
        support = [learned.get(axis, (0, size - 1)) for axis, size in enumerate(self.dilated_kernel_size)]
        return crop_to_support(kernel, self._padding_pairs, support)

    def _kernel_parameters(self) -> tuple[Tensor, ...]:
        return tuple(t for t in (self.weight, self.P, self.SIG) if t is not None)

    def _inference_kernel(self) -> tuple[Tensor, tuple[tuple[int, int], ...]] | None:
        """:meth:`_kernel_and_padding`, built once and reused while no parameter changes, when no
        gradient can flow to the parameters (``torch.no_grad``/``inference_mode``, or eval mode
        with frozen parameters); ``None`` when the kernel must be built with autograd."""
        parameters = self._kernel_parameters()
        if torch.is_grad_enabled() and (self.training or any(p.requires_grad for p in parameters)):
            return None
        # In-place updates (optimizer steps, load_state_dict, clamping) bump _version; .to() and
        # .data assignment change the storage.
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parameters)
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self._kernel_and_padding())
            self.__dict__["_kernel_cache"] = cached
        return cached[1]

    def _check_input(self, input: Tensor) -> None:
        dims = self.spatial_dims
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name} expects a Tensor input, got {type(input).__name__}")
        if input.dim() not in (dims + 1, dims + 2):
            raise ValueError(
                f"{name} expects a {dims + 2}D (batched) or {dims + 1}D (unbatched) input, "
                f"got shape {tuple(input.shape)}"
            )
        channels = input.shape[-dims - 1]
        if channels != self.in_channels:
            raise ValueError(
                f"{name} has in_channels={self.in_channels}, got input with {channels} channels "
                f"(shape {tuple(input.shape)})"
            )
        if input.dtype != self.weight.dtype:
            raise TypeError(f"{name} input dtype {input.dtype} does not match its parameters' {self.weight.dtype}")
        if input.device != self.weight.device:
            raise ValueError(f"{name} input is on {input.device}, its parameters on {self.weight.device}")

    def forward(self, input: Tensor) -> Tensor:
        """``(N, C_in, *spatial)`` or ``(C_in, *spatial)`` -> ``(N, C_out, *spatial_out)``."""
        self._check_input(input)
        unbatched = input.dim() == self.spatial_dims + 1
        batch = input.unsqueeze(0) if unbatched else input
        kernel, padding = self._inference_kernel() or self._kernel_and_padding()
        output = convolve(batch, kernel, self.bias, self.stride, padding, self.groups, self.padding_mode, self.backend)
        return output.squeeze(0) if unbatched else output

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
        if self.shared_positions is not None:
            text += ", shared_positions=True"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


class Dcls1d(_DclsNd):
    """1D DCLS convolution (e.g. learnable delays), input ``(N, C_in, L)``.

    Args:
        in_channels, out_channels, stride, groups, bias, padding_mode: as ``nn.Conv1d``.
        kernel_count: number of elements ``K`` per (output, input) channel pair.
        dilated_kernel_size: window size ``s`` the elements move in.
        padding: int, tuple, ``"same"`` or ``"valid"``.
        version: ``"gauss"`` (default), ``"triangle"`` (``"max"``), ``"bilinear"`` (``"v0"``, ``"v1"``).
        learned_axes: kernel axes with learned positions (default: all).
        shared_positions: a :class:`~dcls_zoo.shared.SharedPositions` to take ``P``/``SIG`` from
            instead of owning them (positions shared by a stage).
        backend: convolution backend, ``"auto"`` (chosen per call) or a name in
            :data:`dcls_zoo.backends.BACKENDS`.
    """

    spatial_dims = 1


class Dcls2d(_DclsNd):
    """2D DCLS convolution, input ``(N, C_in, H, W)``; ``P[0]`` is the row (H) position.

    Arguments as :class:`Dcls1d`, with pairs for the per-axis ones. ``learned_axes=(1,)`` with
    ``dilated_kernel_size=(3, 25)`` learns positions along the width only, with a dense size-3
    kernel along the height.
    """

    spatial_dims = 2


class Dcls3d(_DclsNd):
    """3D DCLS convolution, input ``(N, C_in, D, H, W)``; ``P[i]`` along kernel axis ``i``.

    Arguments as :class:`Dcls1d`, with triples for the per-axis ones. ``learned_axes=(0,)`` with
    ``dilated_kernel_size=(25, 3, 3)`` gives learnable delays along time (axis 0) with a dense
    3x3 spatial kernel (the official ``Dcls3_1d`` use case, but with time first).
    """

    spatial_dims = 3
