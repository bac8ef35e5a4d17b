"""The DCLS convolution as a function: :func:`dcls_conv` (and :func:`dcls_kernel`).

``dcls_conv(input, weight, P, SIG, dilated_kernel_size, ...)`` is to :class:`~dcls_zoo.Dcls2d`
what ``torchvision.ops.deform_conv2d`` is to ``DeformConv2d``: the layers hold parameters and
call it once per forward. It checks its arguments as ``nn.ConvNd`` does, builds the dense kernel
from the elements' weights and positions (:mod:`dcls_zoo.construct`) and convolves through the
backend chosen for the call (:mod:`dcls_zoo.backends`).

Tensors that do not fit each other are refused before construction, with a ``ValueError`` that
names the argument and gives its shape and the one expected (:func:`check_parameters`, memoised
on the shapes); a ``SIG`` given to ``"bilinear"`` or missing for ``"triangle"``/``"gauss"`` too.
An integer or bool input is a ``TypeError`` that says to convert (and normalise) it.

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


def _listed(value: object) -> bool:
    return isinstance(value, (Sequence, torch.Size)) and not isinstance(value, str)


def _spatial_dims(weight: Tensor, P: Tensor, dilated_kernel_size: object, input: object = None,
                  groups: object = 1) -> int:
    """How many spatial axes a call has, decided before its tensors are checked against it.

    A window listed per axis says it. Else the tensors do (``P``'s learned axes and ``weight``'s
    dense ones), unless the input contradicts them: then the input's batched reading wins, so the
    shape checks name the parameter that disagrees with it. A ``dims + 1``-dimensional input
    whose channels fit only as a batch of ``dims - 1`` spatial axes is read so too.
    """
    if type(dilated_kernel_size) is tuple or _listed(dilated_kernel_size):  # the layers' tuple: quickly
        return len(dilated_kernel_size)
    # at least one axis: a P without learned axes is then named by the shape checks
    dims = max(max(weight.dim() - 3, 0) + (P.shape[0] if P.dim() else 0), 1)
    if not isinstance(input, Tensor) or input.dim() == dims + 2 or input.dim() < 3:
        return dims
    if input.dim() == dims + 1:
        if type(groups) is not int or weight.dim() < 2:
            return dims
        channels = weight.shape[1] * groups
        if input.shape[0] == channels or input.shape[1] != channels:
            return dims
    return input.dim() - 2


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def _check_shapes(weight: torch.Size, P: torch.Size, SIG: torch.Size | None, bias: torch.Size | None,
                  geometry: DclsGeometry) -> None:
    axes, dense = geometry.learned_axes, geometry.dense_window
    learned = f"{len(axes)} learned ax{'is' if len(axes) == 1 else 'es'}"
    if len(axes) != geometry.dims:
        learned += f" (learned_axes={axes})"
    dense_names = [f"{size} (axis {axis})" for axis, size in enumerate(geometry.window) if axis not in axes]
    if len(weight) != 3 + len(dense) or tuple(weight[2:-1]) != dense:
        expected = ", ".join(["C_out", "C_in/groups", *dense_names, "K"])
        raise ValueError(
            f"weight has shape {_shape(weight)}: expected ({expected}) for a {geometry.dims}D convolution "
            f"with dilated_kernel_size={geometry.window} and {learned}"
        )
    c_out, c_in, count = weight[0], weight[1], weight[-1]
    fits = (len(P) == len(weight) + 1 and P[0] == len(axes) and P[-1] == count
            and all(p in (w, 1) for p, w in zip(P[1:-1], weight[:-1])))
    if not fits:
        expected = ", ".join([str(len(axes)), f"C_out={c_out} or 1", f"C_in/groups={c_in} or 1",
                              *(f"{size} or 1" for size in dense), f"K={count}"])
        raise ValueError(
            f"P has shape {_shape(P)}: expected ({expected}) for weight {_shape(weight)} and {learned}"
        )
    name = geometry.interpolation.name
    if not geometry.interpolation.has_sigma and SIG is not None:
        raise ValueError(f"SIG has shape {_shape(SIG)} but version {name!r} has no widths: pass SIG=None")
    if geometry.interpolation.has_sigma and SIG is None:
        raise ValueError(f"SIG is None but version {name!r} learns widths: pass SIG shaped like P {_shape(P)}")
    if SIG is not None and SIG != P:
        raise ValueError(f"SIG has shape {_shape(SIG)}: expected P's shape {_shape(P)} (one width per position)")
    if bias is not None and tuple(bias) != (c_out,):
        raise ValueError(f"bias has shape {_shape(bias)}: expected (C_out={c_out},) for weight {_shape(weight)}")


@functools.lru_cache(maxsize=512)
def _memoised_shapes(*shapes_and_geometry) -> None:
    _check_shapes(*shapes_and_geometry)  # a failure is not cached: it raises again next time


def check_parameters(weight: Tensor, P: Tensor, SIG: Tensor | None, bias: Tensor | None,
                     geometry: DclsGeometry) -> None:
    """Refuse ``weight``, ``P``, ``SIG`` and ``bias`` whose shapes do not fit each other and
    ``geometry``, naming the argument and both shapes (memoised on the shapes: a layer's call
    costs one dictionary look-up, on metadata only)."""
    # weight and P: the callers have checked them (dcls_conv, dcls_kernel; TorchScript types them)
    for name, value in (("SIG", SIG), ("bias", bias)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a Tensor or None, got {type(value).__name__}")
    shapes = (weight.shape, P.shape, None if SIG is None else SIG.shape, None if bias is None else bias.shape)
    if is_compiling():  # checked once while tracing; Dynamo would warn about stepping over the memo
        _check_shapes(*shapes, geometry)
    else:
        _memoised_shapes(*shapes, geometry)


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
        P: ``(len(learned_axes), C_out, C_in / groups, *D, K)`` centred positions; every
            dimension but the first and ``K`` may be 1 (positions shared, e.g. by channels).
        SIG: ``P``'s shape for ``"triangle"``/``"gauss"``, ``None`` for ``"bilinear"``.
        dilated_kernel_size: the window, an int or one size per spatial axis.
        version: the interpolation.
        learned_axes: kernel axes with learned positions (default: all).
        footprints: ``axis_footprints(P, SIG, ...)`` when already built (positions shared by
            several calls); ``P``/``SIG`` are then only checked.

    Returns:
        ``(C_out, C_in / groups, *dilated_kernel_size)`` in ``weight``'s dtype (also under autocast).
    """
    if not isinstance(weight, Tensor) or not isinstance(P, Tensor):
        raise TypeError("dcls_kernel expects Tensors for weight and P")
    geometry = dcls_geometry(_spatial_dims(weight, P, dilated_kernel_size), dilated_kernel_size, version=version,
                             learned_axes=learned_axes)
    check_parameters(weight, P, SIG, None, geometry)
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
    if not (input.dtype.is_floating_point or input.dtype.is_complex):
        raise TypeError(
            f"input has dtype {input.dtype}; DCLS convolves floating-point tensors: convert images with "
            f"input.float() (and normalise) first"
        )
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
    check_parameters(weight, P, SIG, bias, geometry)
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
            along the ``i``-th learned axis in PyTorch's order; every dimension but the first
            and ``K`` may be 1 (positions shared, e.g. by channels).
        SIG: ``P``'s shape (``"triangle"``/``"gauss"`` widths) or ``None`` (``"bilinear"``).
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
        _spatial_dims(weight, P, dilated_kernel_size, input, groups), dilated_kernel_size, stride, padding, groups,
        padding_mode, version, learned_axes,
    )
    return convolve_with_geometry(input, weight, P, SIG, bias, geometry, _check_backend(backend), footprints, cache)
