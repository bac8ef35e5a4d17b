"""The DCLS convolution as a function: :func:`dcls_conv` (and :func:`dcls_kernel`).

``dcls_conv(input, weight, P, SIG, dilated_kernel_size, ...)`` is to :class:`~dcls_zoo.Dcls2d`
what ``torchvision.ops.deform_conv2d`` is to ``DeformConv2d``: the layers hold parameters and
call it once per forward. It checks its arguments as ``nn.ConvNd`` does, builds the dense kernel
from the elements' weights and positions (:mod:`dcls_zoo.construct`) and convolves through the
backend chosen for the call (:mod:`dcls_zoo.backends`).

Precision. Under ``torch.autocast`` the kernel is built from the parameters in their own dtype
(fp32: bf16's 8-bit mantissa cannot place an element inside a 17-tap window to better than a
tenth of a tap) and the convolution runs in the autocast dtype, as ``nn.Conv2d``'s does;
gradients reach the parameters in their dtype.

Positions must be finite: where the backend may read values on the host (the CPU) a non-finite
``P`` or ``SIG`` is refused with the index of the first bad entry.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple, Union

import torch
from torch import Tensor

from .backends import PADDING_MODES, convolve, is_compiling, may_read_host, prepare_kernel
from .backends import _check_name as _check_backend
from .construct import (
    Footprints,
    Interpolation,
    autocast_dtype,
    axis_footprints,
    kernel_from_footprints,
    resolve_interpolation,
)

__all__ = ["DclsGeometry", "KernelCache", "dcls_conv", "dcls_geometry", "dcls_kernel"]


def as_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``; anything with ``__index__`` (numpy integers) counts."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} (bool)")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def as_int_tuple(value: object, dims: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as a ``dims``-tuple of ints ``>= minimum`` (an int is repeated)."""
    if isinstance(value, (Sequence, torch.Size)) and not isinstance(value, str):
        if len(value) != dims:
            raise ValueError(f"{name} must have {dims} entries (one per spatial axis), got {tuple(value)!r}")
        return tuple(as_int(v, name, minimum) for v in value)
    return (as_int(value, name, minimum),) * dims


def resolve_padding(
    padding: int | Sequence[int] | str, window: Sequence[int], stride: Sequence[int]
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
    amounts = as_int_tuple(padding, len(window), "padding", minimum=0)
    return tuple((p, p) for p in amounts)


def check_learned_axes(learned_axes: Sequence[int] | None, dims: int) -> tuple[int, ...]:
    """The sorted kernel axes with learned positions (``None``: all ``dims`` of them)."""
    if learned_axes is None:
        return tuple(range(dims))
    if not isinstance(learned_axes, Sequence) or isinstance(learned_axes, str):
        raise TypeError(f"learned_axes must be a sequence of axis indices, got {learned_axes!r}")
    try:
        axes = tuple(sorted(as_int(a, "learned_axes", 0) for a in learned_axes))
    except (TypeError, ValueError):
        axes = ()
    if not axes or len(set(axes)) != len(axes) or axes[-1] >= dims:
        raise ValueError(f"learned_axes must be distinct kernel axes in [0, {dims}), got {tuple(learned_axes)!r}")
    return axes


class DclsGeometry(NamedTuple):
    """Everything about a DCLS convolution except its tensors, checked and normalised."""

    window: tuple[int, ...]  # dilated_kernel_size, one per spatial axis
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (before, after) per axis
    groups: int
    padding_mode: str
    interpolation: Interpolation
    learned_axes: tuple[int, ...]

    @property
    def dims(self) -> int:
        return len(self.window)

    @property
    def learned_window(self) -> tuple[int, ...]:
        return tuple(self.window[a] for a in self.learned_axes)

    @property
    def dense_window(self) -> tuple[int, ...]:
        return tuple(w for a, w in enumerate(self.window) if a not in self.learned_axes)

    @property
    def kernel_permutation(self) -> tuple[int, ...]:
        """Construction yields ``(C_out, C_in/g, *dense axes, *learned axes)``: this puts axes in order."""
        built = [a for a in range(self.dims) if a not in self.learned_axes] + list(self.learned_axes)
        return (0, 1, *(2 + built.index(a) for a in range(self.dims)))

    def support(self, footprints: Footprints) -> tuple[tuple[int, int], ...]:
        """Per axis, the taps any element reaches (dense axes: all of them)."""
        learned = dict(zip(self.learned_axes, footprints.support()))
        return tuple(learned.get(a, (0, w - 1)) for a, w in enumerate(self.window))


@functools.lru_cache(maxsize=512)
def _memoised_geometry(types: tuple, dims, *args) -> DclsGeometry:
    # types is part of the key only: 3.0 == 3 and True == 1, but they must not pass as ints
    return _geometry(dims, *args)


def _types(args: tuple) -> tuple:
    return tuple((type(a), tuple(map(type, a)) if isinstance(a, tuple) else ()) for a in args)


def _geometry(dims, window, stride, padding, groups, padding_mode, version, learned_axes) -> DclsGeometry:
    window = as_int_tuple(window, dims, "dilated_kernel_size")
    stride = as_int_tuple(stride, dims, "stride")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return DclsGeometry(
        window=window,
        stride=stride,
        padding=resolve_padding(padding, window, stride),
        groups=as_int(groups, "groups"),
        padding_mode=padding_mode,
        interpolation=resolve_interpolation(version),
        learned_axes=check_learned_axes(learned_axes, dims),
    )


def _frozen(value: object) -> object:
    """``value`` with lists turned into tuples, so that it can key the memo."""
    if isinstance(value, (list, tuple, torch.Size)):
        return tuple(_frozen(v) for v in value)
    return value


def dcls_geometry(
    dims: int,
    dilated_kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    groups: int = 1,
    padding_mode: str = "zeros",
    version: str | Interpolation = "gauss",
    learned_axes: Sequence[int] | None = None,
) -> DclsGeometry:
    """Check and normalise the non-tensor arguments of :func:`dcls_conv` (memoised: a layer's
    already normalised arguments cost one dictionary look-up)."""
    args = (dilated_kernel_size, stride, padding, groups, padding_mode, version, learned_axes)
    if is_compiling():
        # Dynamo evaluates this once, while tracing, and warns about an lru_cache it steps over.
        return _geometry(dims, *args)
    for candidate in (args, tuple(_frozen(a) for a in args)):
        try:
            return _memoised_geometry(_types(candidate), dims, *candidate)
        except TypeError as error:
            if "unhashable" not in str(error):
                raise
    return _geometry(dims, *args)  # something unhashable: let the checks name it


def check_finite_positions(P: Tensor, SIG: Tensor | None) -> None:
    """Refuse non-finite positions or widths, naming the first bad entry (host-readable devices only)."""
    for name, tensor in (("P", P), ("SIG", SIG)):
        if tensor is None or not may_read_host(tensor):
            continue
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            bad = (~finite).nonzero()
            index = tuple(bad[0].tolist())
            raise ValueError(
                f"{name} holds {len(bad)} non-finite value(s) of {tensor.numel()} (first: {name}"
                f"[{', '.join(map(str, index))}] = {tensor[index].item()}); DCLS positions must be finite. "
                "A diverged run or a damaged checkpoint leaves them so: lower the learning rate or reload good weights."
            )


FootprintsArgument = Union[Footprints, Callable[[], Footprints], None]


def _kernel(weight: Tensor, P: Tensor, SIG: Tensor | None, geometry: DclsGeometry,
            footprints: FootprintsArgument) -> tuple[Tensor, Footprints]:
    check_finite_positions(P, SIG)
    if callable(footprints):
        footprints = footprints()
    if footprints is None:
        footprints = axis_footprints(P, SIG, geometry.learned_window, geometry.interpolation)
    kernel = kernel_from_footprints(weight, footprints).permute(geometry.kernel_permutation)
    return kernel, footprints


def dcls_kernel(
    weight: Tensor,
    P: Tensor,
    SIG: Tensor | None,
    dilated_kernel_size: int | Sequence[int],
    version: str | Interpolation = "gauss",
    learned_axes: Sequence[int] | None = None,
    *,
    footprints: FootprintsArgument = None,
) -> Tensor:
    """The dense kernel of a DCLS convolution, differentiable in ``weight``, ``P`` and ``SIG``.

    Args:
        weight: ``(C_out, C_in / groups, *D, K)`` element weights (``D``: sizes of the axes
            without learned positions, usually none).
        P: ``(len(learned_axes), C_out, C_in / groups, *D, K)`` centred positions (or a shape
            that broadcasts to it, e.g. positions shared by channels).
        SIG: like ``P`` for ``"triangle"``/``"gauss"``, ``None`` for ``"bilinear"``.
        dilated_kernel_size: the window, an int or one size per spatial axis.
        version: the interpolation.
        learned_axes: kernel axes with learned positions (default: all).
        footprints: ``axis_footprints(P, SIG, ...)`` when already built (positions shared by
            several calls); ``P``/``SIG`` are then only checked.

    Returns:
        ``(C_out, C_in / groups, *dilated_kernel_size)`` in ``weight``'s dtype (also under autocast).
    """
    geometry = dcls_geometry(weight.dim() - 3 + P.shape[0], dilated_kernel_size, version=version,
                             learned_axes=learned_axes)
    return _kernel(weight, P, SIG, geometry, footprints)[0]


class KernelCache:
    """A layer's last kernel built without autograd, reused while its parameters are unchanged
    (on the CPU: :func:`dcls_conv` does not cache where comparing would synchronise a device).

    The test is exact: the parameters are compared element by element with a copy kept when the
    kernel was built. DCLS parameters are a few dozen numbers per channel, so this costs far
    less than building the kernel, and it sees every change, ``.data`` edits included. Copies
    (``copy.deepcopy``, pickling) start empty.
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple, tuple[Tensor, ...], tuple[Tensor, tuple]] | None = None
        self.builds = 0  # kernels built through this cache (for tests and profiling)

    @staticmethod
    def _key(tensors: Sequence[Tensor], compute_dtype: torch.dtype, geometry: DclsGeometry) -> tuple:
        return (compute_dtype, geometry, *((t.dtype, t.device, t.shape) for t in tensors))

    def get(self, tensors: Sequence[Tensor], compute_dtype: torch.dtype,
            geometry: DclsGeometry) -> tuple[Tensor, tuple] | None:
        """The kept kernel and padding if ``tensors`` equal the kept copies exactly, else ``None``."""
        if self._entry is None:
            return None
        key, snapshot, prepared = self._entry
        if key != self._key(tensors, compute_dtype, geometry):
            return None
        if not all(torch.equal(kept, t) for kept, t in zip(snapshot, tensors)):
            return None
        return prepared

    def put(self, tensors: Sequence[Tensor], compute_dtype: torch.dtype, geometry: DclsGeometry,
            prepared: tuple[Tensor, tuple]) -> None:
        snapshot = tuple(t.detach().clone() for t in tensors)
        self._entry = (self._key(tensors, compute_dtype, geometry), snapshot, prepared)
        self.builds += 1

    def clear(self) -> None:
        self._entry = None

    def __deepcopy__(self, memo: dict) -> KernelCache:
        return KernelCache()

    def __getstate__(self) -> dict:
        return {"_entry": None, "builds": 0}


def _compute_dtype(input: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the convolution runs in: autocast's where it applies, else the parameters'."""
    autocast = autocast_dtype(input.device.type)
    if autocast is not None and weight.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return autocast
    if input.dtype != weight.dtype:
        raise TypeError(
            f"dcls_conv input dtype {input.dtype} does not match its parameters' {weight.dtype}; "
            f"convert one (e.g. input.to({weight.dtype}) or layer.to({input.dtype})) or run under torch.autocast"
        )
    return weight.dtype


def _check_input(input: Tensor, weight: Tensor, geometry: DclsGeometry) -> None:
    dims = geometry.dims
    if not isinstance(input, Tensor):
        raise TypeError(f"dcls_conv expects a Tensor input, got {type(input).__name__}")
    if input.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"dcls_conv expects a {dims + 2}D (batched) or {dims + 1}D (unbatched) input, got shape {tuple(input.shape)}"
        )
    channels = input.shape[-dims - 1]
    if channels != weight.shape[1] * geometry.groups:
        raise ValueError(
            f"dcls_conv has in_channels={weight.shape[1] * geometry.groups}, got input with {channels} channels "
            f"(shape {tuple(input.shape)}; weight {tuple(weight.shape)}, groups={geometry.groups})"
        )
    if input.device != weight.device:
        raise ValueError(f"dcls_conv input is on {input.device}, its parameters on {weight.device}")


def _check_padding_fits(input: Tensor, geometry: DclsGeometry) -> None:
    """As ``nn.ConvNd`` (through ``F.pad``): reflect padding below the size, circular up to it."""
    if geometry.padding_mode not in ("reflect", "circular"):
        return
    limit = (lambda size: size - 1) if geometry.padding_mode == "reflect" else (lambda size: size)
    for axis, (size, pair) in enumerate(zip(input.shape[2:], geometry.padding)):
        if max(pair) > limit(size):
            relation = "less than" if geometry.padding_mode == "reflect" else "at most"
            raise ValueError(
                f"padding {pair} along spatial axis {axis} must be {relation} the input size {size} with "
                f"padding_mode={geometry.padding_mode!r} (input shape {tuple(input.shape)})"
            )


def prepared_kernel(weight: Tensor, P: Tensor, SIG: Tensor | None, geometry: DclsGeometry,
                    footprints: FootprintsArgument, compute_dtype: torch.dtype) -> tuple[Tensor, tuple]:
    """The kernel as the backend will convolve it (cropped to the elements' support where
    :func:`~dcls_zoo.backends.may_read_host` allows it, in ``compute_dtype``) and its
    ``(before, after)`` padding per axis."""
    kernel, footprints = _kernel(weight, P, SIG, geometry, footprints)
    kernel, padding = prepare_kernel(kernel, geometry.padding, lambda: geometry.support(footprints))
    return kernel.to(compute_dtype), padding


def _no_gradient_reaches(tensors: Sequence[Tensor]) -> bool:
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def _refuse_legacy_onnx_export() -> None:
    if torch.onnx.is_in_onnx_export() and not is_compiling():
        raise RuntimeError(
            "torch.onnx.export(..., dynamo=False) cannot trace a DCLS layer (its kernel is built in Python): "
            "export with dynamo=True (the default), or call dcls_zoo.fuse(model) first to export plain convolutions"
        )


def convolve_with_geometry(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Tensor | None,
    bias: Tensor | None,
    geometry: DclsGeometry,
    backend: str,
    footprints: FootprintsArgument,
    cache: KernelCache | None,
) -> Tensor:
    """:func:`dcls_conv` with its non-tensor arguments already checked (a :class:`DclsGeometry`
    from :func:`dcls_geometry`) and ``backend`` a checked name; the scripted layers' entry."""
    _refuse_legacy_onnx_export()
    _check_input(input, weight, geometry)
    unbatched = input.dim() == geometry.dims + 1
    batch = input.unsqueeze(0) if unbatched else input
    _check_padding_fits(batch, geometry)
    compute_dtype = _compute_dtype(batch, weight)
    parameters = tuple(t for t in (weight, P, SIG) if t is not None)
    # Only where comparing values costs no device sync (the CPU), and never while compiling or
    # exporting (fake tensors; the graph must build the kernel). A GPU builds the kernel every
    # call: a few small asynchronous kernels, never stale.
    cacheable = cache is not None and may_read_host(weight) and _no_gradient_reaches(parameters)
    if not cacheable:
        kernel, padding = prepared_kernel(weight, P, SIG, geometry, footprints, compute_dtype)
    else:
        prepared = cache.get(parameters, compute_dtype, geometry)
        if prepared is None:
            # From P and SIG themselves (shared footprints are keyed on versions, which .data
            # edits do not bump), and as normal tensors even inside inference_mode: the cached
            # kernel must also serve later calls whose input needs autograd.
            with torch.inference_mode(False), torch.no_grad():
                prepared = prepared_kernel(weight, P, SIG, geometry, None, compute_dtype)
            cache.put(parameters, compute_dtype, geometry, prepared)
        kernel, padding = prepared
    if bias is not None and bias.dtype != compute_dtype:
        bias = bias.to(compute_dtype)
    if batch.dtype != compute_dtype:
        batch = batch.to(compute_dtype)
    output = convolve(batch, kernel, bias, geometry.stride, padding, geometry.groups, geometry.padding_mode, backend)
    return output.squeeze(0) if unbatched else output


def dcls_conv(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Tensor | None,
    dilated_kernel_size: int | Sequence[int],
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    groups: int = 1,
    padding_mode: str = "zeros",
    version: str | Interpolation = "gauss",
    learned_axes: Sequence[int] | None = None,
    backend: str = "auto",
    *,
    footprints: FootprintsArgument = None,
    cache: KernelCache | None = None,
) -> Tensor:
    """DCLS convolution: build the dense kernel from element weights and positions, convolve.

    Args:
        input: ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``, ``d`` spatial axes.
        weight: ``(C_out, C_in / groups, *D, K)``, ``K`` elements per kernel (``D``: sizes of
            the axes without learned positions, usually none).
        P: ``(len(learned_axes), C_out, C_in / groups, *D, K)`` centred positions, ``P[i]``
            along the ``i``-th learned axis in PyTorch's order (or a shape that broadcasts).
        SIG: like ``P`` (``"triangle"``/``"gauss"`` widths) or ``None`` (``"bilinear"``).
        dilated_kernel_size: the window the elements move in, an int or one size per axis.
        bias: ``(C_out,)`` or ``None``.
        stride, padding, groups, padding_mode: as ``nn.ConvNd`` (``padding`` also
            ``"same"``/``"valid"``, for even windows too).
        version: ``"gauss"``, ``"triangle"`` (``"max"``) or ``"bilinear"`` (``"v0"``, ``"v1"``).
        learned_axes: kernel axes with learned positions (default: all ``d``).
        backend: ``"auto"`` or a name in :data:`dcls_zoo.backends.BACKENDS`.
        footprints: ``axis_footprints(P, SIG, ...)`` when already built (positions shared by
            several layers build them once per forward), or a callable returning them, called
            only if the kernel has to be built.
        cache: a :class:`KernelCache` to reuse the kernel while no gradient can reach the
            parameters (``no_grad``, ``inference_mode`` or frozen parameters).

    Returns:
        ``(N, C_out, *spatial_out)`` (unbatched: ``(C_out, *spatial_out)``), in the autocast
        dtype under ``torch.autocast``, else in the input's.
    """
    if not isinstance(weight, Tensor) or not isinstance(P, Tensor):
        raise TypeError("dcls_conv expects Tensors for weight and P")
    geometry = dcls_geometry(
        weight.dim() - 3 + P.shape[0], dilated_kernel_size, stride, padding, groups, padding_mode, version, learned_axes
    )
    return convolve_with_geometry(input, weight, P, SIG, bias, geometry, _check_backend(backend), footprints, cache)
