"""Convolution with an already-built dense kernel, through the fastest correct path for each call.

The DCLS layers hand their dense kernel to :func:`convolve`, which describes the call
(:class:`ConvCall`: device, dtype, layout, depthwise or not, stride, padding, window) and picks a
backend from :data:`BACKENDS`, the first in order whose ``supports(call)`` has no objection:

- ``"implicit_gemm"``: the optional ``depthwise_conv2d_implicit_gemm`` CUDA extension (used only
  when it imports and its constraints hold: CUDA, fp32/fp16, depthwise 2D, stride 1, "same"
  padding of an odd window). Its absence is the normal case and costs one failed import.
  ``"auto"`` passes it over while ``torch.compile`` traces: its kernels are not torch ops, so
  the graph would break at every layer (the compiled graph convolves natively instead).
- ``"cpu_depthwise"``: depthwise convolutions on the CPU. oneDNN's forward is fast only in
  channels_last, and its weight gradient for large windows falls back to a slow im2col GEMM;
  this backend runs the forward and the input gradient in channels_last and computes the weight
  gradient as one depthwise convolution with the batch folded into the channels (below). Each
  pass has exact variants that are faster on some CPUs and shapes and slower on others; 2D
  calls large enough to matter time them once per shape (:mod:`dcls_zoo.autotune`).
- ``"native"``: ``F.conv1d/2d/3d`` (depthwise 2D inputs on CUDA in channels_last, which sends
  them to cuDNN instead of PyTorch's slow native NCHW depthwise kernels). Always applies.

Every backend first crops the kernel to the taps that can reach the input (exact: with zero
padding, a tap further from the data than the padded map never contributes), which removes a
third of a 17x17 kernel's work on 7x7 maps. The DCLS layers also crop, on the CPU, to the taps
their elements reach (:func:`crop_to_support`).

Choose explicitly with ``Dcls2d(..., backend="native")``, :func:`use_backend` (a context
manager) or :func:`set_backend` (global); ``"auto"`` is the default.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import autotune
from .settings import ScopedSetting

__all__ = [
    "BACKENDS",
    "ConvCall",
    "PADDING_MODES",
    "convolve",
    "crop_to_reach",
    "crop_to_support",
    "get_backend",
    "is_compiling",
    "may_read_host",
    "prepare_kernel",
    "select_backend",
    "set_backend",
    "use_backend",
]

_CONV_BY_DIMS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def is_compiling() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing this call (their tensors are fakes)."""
    return torch.compiler.is_compiling()


# nn.ConvNd's padding modes; "zeros" is applied by the convolution itself when symmetric.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class ConvCall:
    """The facts of one convolution call that decide which backend can run it."""

    device_type: str
    dtype: torch.dtype
    channels_last: bool
    depthwise: bool
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    window: tuple[int, ...]
    padding_mode: str

    @property
    def dims(self) -> int:
        return len(self.window)

    @classmethod
    def describe(cls, input: Tensor, kernel: Tensor, groups: int, stride, padding, padding_mode: str) -> ConvCall:
        dims = kernel.dim() - 2
        channels_last = dims == 2 and input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) \
            and not input.is_contiguous()
        return cls(
            device_type=input.device.type,
            dtype=input.dtype,
            channels_last=channels_last,
            depthwise=groups == input.shape[1] == kernel.shape[0] and kernel.shape[1] == 1,
            stride=tuple(stride),
            padding=tuple(tuple(p) for p in padding),
            window=tuple(kernel.shape[2:]),
            padding_mode=padding_mode,
        )


class _Backend:
    """A way to run a convolution: ``supports(call)`` returns ``None`` or why not; ``run`` runs it.

    ``traceable``: whether ``torch.compile`` can trace ``run`` into its graph (``"auto"`` picks
    only traceable backends while compiling).
    """

    name: str
    traceable: bool = True

    def supports(self, call: ConvCall) -> str | None:
        raise NotImplementedError

    def run(self, input: Tensor, kernel: Tensor, bias: Tensor | None, call: ConvCall) -> Tensor:
        raise NotImplementedError


def _explicit_padding(input: Tensor, call: ConvCall) -> tuple[Tensor, tuple[int, ...]]:
    """Apply non-zero padding modes and asymmetric padding to ``input``; returns the symmetric rest."""
    symmetric = all(before == after for before, after in call.padding)
    if call.padding_mode == "zeros" and symmetric:
        return input, tuple(before for before, _ in call.padding)
    flat = [amount for pair in reversed(call.padding) for amount in pair]  # F.pad: last axis first
    mode = "constant" if call.padding_mode == "zeros" else call.padding_mode
    return F.pad(input, flat, mode=mode), (0,) * call.dims


class _NativeBackend(_Backend):
    name = "native"

    def supports(self, call: ConvCall) -> str | None:
        return None

    def run(self, input: Tensor, kernel: Tensor, bias: Tensor | None, call: ConvCall) -> Tensor:
        input, padding = _explicit_padding(input, call)
        if call.device_type == "cuda" and call.depthwise and call.dims == 2:
            input = input.contiguous(memory_format=torch.channels_last)  # cuDNN's depthwise path
        groups = input.shape[1] // kernel.shape[1]
        return _CONV_BY_DIMS[call.dims](input, kernel, bias, call.stride, padding, 1, groups)


def _grown(kernel: Tensor, padding: tuple[int, ...], grow: int) -> tuple[Tensor, tuple[int, ...]]:
    """``kernel`` with ``grow`` zero taps added on both sides of every axis, and the padding that
    keeps every output reading the same input rows: the same convolution, exactly."""
    if grow == 0:
        return kernel, padding
    return F.pad(kernel, [grow] * (2 * (kernel.dim() - 2))), tuple(p + grow for p in padding)


def _fast_layout(dims: int) -> torch.memory_format:
    """The layout oneDNN's direct depthwise kernels want: channels_last in 2D."""
    return torch.channels_last if dims == 2 else torch.contiguous_format


def _forward_pass(input: Tensor, kernel: Tensor, bias: Tensor | None, stride: tuple[int, ...],
                  padding: tuple[int, ...], grow: int) -> Tensor:
    dims = kernel.dim() - 2
    kernel, padding = _grown(kernel, padding, grow)
    fast = input.contiguous(memory_format=_fast_layout(dims))
    return _CONV_BY_DIMS[dims](fast, kernel, bias, stride, padding, 1, input.shape[1])


def _input_gradient_pass(input: Tensor, kernel: Tensor, grad_output: Tensor, stride: tuple[int, ...],
                         padding: tuple[int, ...], grow: int) -> Tensor:
    dims = kernel.dim() - 2
    kernel, padding = _grown(kernel, padding, grow)
    layout = _fast_layout(dims)
    # The input gradient needs the input's shape and layout only, not its values: an
    # uninitialised stand-in saves copying the activation into channels_last.
    shape_of_input = torch.empty_like(input, memory_format=layout)
    return torch.ops.aten.convolution_backward(
        grad_output.contiguous(memory_format=layout), shape_of_input, kernel, None,
        stride, padding, (1,) * dims, False, (0,) * dims, input.shape[1], (True, False, False),
    )[0]


def _weight_gradient_folded(input: Tensor, grad_output: Tensor, window: Sequence[int], stride: tuple[int, ...],
                            padding: tuple[int, ...]) -> Tensor:
    """``dW`` as one depthwise convolution over the batch folded into the channels (see
    :class:`_DepthwiseCpuConv`)."""
    batch, channels, dims = input.shape[0], input.shape[1], len(window)
    if any(padding):
        # Padded explicitly (with a padding argument oneDNN picks a ~7x slower algorithm here), in
        # one copy that also moves a channels_last input into the planes the folding needs.
        planes = input.new_zeros(batch, channels, *(size + 2 * p for size, p in zip(input.shape[2:], padding)))
        planes[(..., *(slice(p, p + size) for size, p in zip(input.shape[2:], padding)))].copy_(input)
    else:
        planes = input.contiguous()
    folded_input = planes.reshape(1, batch * channels, *planes.shape[2:])
    folded_grad = grad_output.contiguous().reshape(batch * channels, 1, *grad_output.shape[2:])
    folded = _CONV_BY_DIMS[dims](folded_input, folded_grad, None, 1, 0, stride, batch * channels)
    # with a stride, the dilated "kernel" can reach up to stride - 1 taps past the window
    folded = folded[(..., *(slice(0, w) for w in window))]
    return folded.reshape(batch, channels, *window).sum(0).unsqueeze(1)


def _weight_gradient_onednn(input: Tensor, grad_output: Tensor, window: Sequence[int], stride: tuple[int, ...],
                            padding: tuple[int, ...]) -> Tensor:
    """``dW`` by oneDNN's own weight-gradient primitive (im2col: fast for small windows only)."""
    dims, channels = len(window), input.shape[1]
    layout = _fast_layout(dims)
    shape_of_kernel = input.new_empty(channels, 1, *window)
    return torch.ops.aten.convolution_backward(
        grad_output.contiguous(memory_format=layout), input.contiguous(memory_format=layout), shape_of_kernel, None,
        stride, padding, (1,) * dims, False, (0,) * dims, channels, (False, True, False),
    )[1]


_WEIGHT_GRADIENTS = {"folded": _weight_gradient_folded, "onednn": _weight_gradient_onednn}
# oneDNN's im2col weight gradient grows with the window's area: it wins at 3x3, already loses at
# 9x9 (32 against 25 ms on 96 channels of 56x56, AVX2) and takes 0.6-12 s at 17x17, where the
# folded one takes 0.06 s. Beyond this many taps per axis it is not worth even one timed run.
_ONEDNN_WEIGHT_GRADIENT_MAX_TAPS = 7


def _weight_gradient_pass(input: Tensor, grad_output: Tensor, window: Sequence[int], stride: tuple[int, ...],
                          padding: tuple[int, ...], method: str, grow: int) -> Tensor:
    """``dW`` by ``method`` over the window grown by ``grow`` taps per side, cut back to the window."""
    grown_window = [w + 2 * grow for w in window]
    gradient = _WEIGHT_GRADIENTS[method](input, grad_output, grown_window, stride, tuple(p + grow for p in padding))
    return gradient[(..., *(slice(grow, grow + w) for w in window))]


# Zero taps per side tried for each pass: oneDNN's depthwise time is not monotonic in the window.
_GROWTHS = (0, 1, 2)


def _variant(pass_name: str, input: Tensor, window: Sequence[int], stride: tuple[int, ...], padding: tuple[int, ...],
             run: Callable[[str], object], names: Sequence[str]) -> str:
    """The fastest of the exact variants ``names`` of one pass (``run(name)`` runs one) for this
    call's shape, by :func:`dcls_zoo.autotune.choose`; the first name is the default path."""
    # Nothing is measured while torch.compile/export traces (autotune's rule), and not even a
    # recorded choice is looked up: its key reads the thread count and its table is behind a
    # lock, both of which would break the graph at every depthwise layer.
    if is_compiling() or not autotune.active():  # the usual case: the hot path builds no candidates
        return names[0]
    key = (pass_name, tuple(input.shape), input.dtype, tuple(input.stride()), tuple(window), stride, padding,
           torch.get_num_threads())
    spatial = [(size + 2 * p - w) // s + 1 for size, w, s, p in zip(input.shape[2:], window, stride, padding)]
    macs = math.prod(input.shape[:2]) * math.prod(spatial) * math.prod(window)
    candidates = {name: (lambda name=name: run(name)) for name in names}
    return autotune.choose(key, candidates, default=names[0], macs=macs)


def _growth(pass_name: str, input: Tensor, window: Sequence[int], stride: tuple[int, ...], padding: tuple[int, ...],
            run: Callable[[int], object]) -> int:
    """How many zero taps per side (of :data:`_GROWTHS`) make ``run(grow)``, one pass, fastest."""
    names = [str(grow) for grow in _GROWTHS]
    return int(_variant(pass_name, input, window, stride, padding, lambda name: run(int(name)), names))


class _DepthwiseCpuConv(torch.autograd.Function):
    """Depthwise convolution on the CPU with a batch-folded weight gradient.

    The forward and the input gradient run in channels_last (2D), where oneDNN has direct
    depthwise kernels. The weight gradient ``dW[c, u] = sum_n sum_h x_pad[n, c, s*h + u] g[n, c, h]``
    is itself a depthwise convolution: the input seen as one image with ``N * C`` channels,
    convolved with the output gradient as its ``N * C`` kernels (dilated by the stride), then
    summed over ``n``; oneDNN runs that directly instead of through im2col.

    Each pass also has exact variants whose speed depends on the CPU: the kernel grown by zero
    taps (a larger window is sometimes a faster oneDNN kernel), and for the weight gradient
    oneDNN's own primitive (several times faster for 3x3 windows). 2D calls large enough to matter
    measure them once per shape (:mod:`dcls_zoo.autotune`); otherwise the passes above run.
    """

    @staticmethod
    def forward(ctx, input: Tensor, kernel: Tensor, bias: Tensor | None, stride: tuple[int, ...],
                padding: tuple[int, ...]) -> Tensor:
        grow = 0
        if kernel.dim() == 4:
            grow = _growth("forward", input, kernel.shape[2:], stride, padding,
                           lambda g: _forward_pass(input, kernel, None, stride, padding, g))
        output = _forward_pass(input, kernel, bias, stride, padding, grow)
        ctx.save_for_backward(input, kernel)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        input, kernel = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _DepthwiseCpuConv._differentiable_backward(ctx, input, kernel, grad_output)
        stride, padding, window, planar = ctx.stride, ctx.padding, kernel.shape[2:], kernel.dim() == 4
        grad_input = grad_kernel = grad_bias = None
        if ctx.needs_input_grad[0]:
            grow = 0
            if planar:
                grow = _growth("input_gradient", input, window, stride, padding,
                               lambda g: _input_gradient_pass(input, kernel, grad_output, stride, padding, g))
            grad_input = _input_gradient_pass(input, kernel, grad_output, stride, padding, grow)
        if ctx.needs_input_grad[1] and input.shape[0] == 0:
            grad_kernel = torch.zeros_like(kernel)  # an empty batch: no group to fold
        elif ctx.needs_input_grad[1]:
            method, grow = "folded", 0
            if planar:  # the method first, then its growth
                methods = [name for name in _WEIGHT_GRADIENTS
                           if name != "onednn" or max(window) <= _ONEDNN_WEIGHT_GRADIENT_MAX_TAPS]
                def weight_gradient(method: str, grow: int) -> Tensor:
                    return _weight_gradient_pass(input, grad_output, window, stride, padding, method, grow)

                method = _variant("weight_gradient", input, window, stride, padding,
                                  lambda name: weight_gradient(name, 0), methods)
                grow = _growth(f"weight_gradient {method}", input, window, stride, padding,
                               lambda g: weight_gradient(method, g))
            grad_kernel = _weight_gradient_pass(input, grad_output, window, stride, padding, method, grow)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
        return grad_input, grad_kernel, grad_bias, None, None

    @staticmethod
    def _differentiable_backward(ctx, input: Tensor, kernel: Tensor, grad_output: Tensor):
        """create_graph=True (gradient penalties, MAML): the gradients of an autograd re-run of the
        forward, so that they can be differentiated again."""
        dims = kernel.dim() - 2
        bias = torch.zeros(kernel.shape[0], dtype=kernel.dtype, device=kernel.device, requires_grad=True) \
            if ctx.has_bias else None
        output = _CONV_BY_DIMS[dims](input, kernel, bias, ctx.stride, ctx.padding, 1, input.shape[1])
        candidates = (input, kernel, bias)
        wanted = [t for t, needed in zip(candidates, ctx.needs_input_grad[:3]) if needed and t is not None]
        grads = iter(torch.autograd.grad(output, wanted, grad_output, create_graph=True, allow_unused=True))
        result = [next(grads) if needed and t is not None else None for t, needed in zip(candidates, ctx.needs_input_grad[:3])]
        return (*result, None, None)


class _CpuDepthwiseBackend(_Backend):
    name = "cpu_depthwise"

    def supports(self, call: ConvCall) -> str | None:
        if call.device_type != "cpu":
            return f"device is {call.device_type}, not cpu"
        if not call.depthwise:
            return "not a depthwise convolution"
        if call.dtype not in (torch.float32, torch.float64):
            return f"dtype {call.dtype} (float32/float64 only)"
        return None

    def run(self, input: Tensor, kernel: Tensor, bias: Tensor | None, call: ConvCall) -> Tensor:
        input, padding = _explicit_padding(input, call)
        return _DepthwiseCpuConv.apply(input, kernel, bias, call.stride, padding)


class _ImplicitGemmBackend(_Backend):
    """The optional ``depthwise_conv2d_implicit_gemm`` extension (never required, never vendored)."""

    name = "implicit_gemm"
    traceable = False  # importing it, and its pybind kernels, are opaque to dynamo: graph breaks
    _module: object | None = None
    _import_error: str | None = None

    def _extension(self) -> object | None:
        if self._module is None and self._import_error is None:
            try:
                type(self)._module = importlib.import_module("depthwise_conv2d_implicit_gemm")
            except Exception as error:  # any failure (missing, broken build) just disables it
                type(self)._import_error = f"{type(error).__name__}: {error}"
        return self._module

    def supports(self, call: ConvCall) -> str | None:
        if call.device_type != "cuda":
            return f"device is {call.device_type}, not cuda"
        if not call.depthwise or call.dims != 2:
            return "not a depthwise 2D convolution"
        if call.dtype not in (torch.float32, torch.float16):
            return f"dtype {call.dtype} (the extension has fp32 and fp16 kernels only)"
        if call.stride != (1, 1):
            return f"stride {call.stride} (the extension only does stride 1)"
        if call.channels_last:
            return "channels_last input (the extension needs contiguous NCHW)"
        if call.padding_mode != "zeros" or any(w % 2 == 0 or p != (w // 2, w // 2) for w, p in zip(call.window, call.padding)):
            return "padding is not the 'same' zero padding of an odd window"
        if self._extension() is None:
            return f"depthwise_conv2d_implicit_gemm is not importable ({self._import_error})"
        return None

    def run(self, input: Tensor, kernel: Tensor, bias: Tensor | None, call: ConvCall) -> Tensor:
        module = self._extension()
        function = module._DepthWiseConv2dImplicitGEMMFP16 if call.dtype == torch.float16 else \
            module._DepthWiseConv2dImplicitGEMMFP32
        output = function.apply(input.contiguous(), kernel.contiguous())
        return output if bias is None else output + bias.view(1, -1, 1, 1)


BACKENDS: dict[str, _Backend] = {
    backend.name: backend for backend in (_ImplicitGemmBackend(), _CpuDepthwiseBackend(), _NativeBackend())
}

# the backend for layers left on "auto": set_backend's value, or a use_backend block's
_backend_setting: ScopedSetting[str] = ScopedSetting("auto")


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {list(BACKENDS)}")
    return name


def set_backend(name: str) -> None:
    """Use backend ``name`` (or ``"auto"``) for every DCLS layer whose own ``backend`` is ``"auto"``."""
    _backend_setting.value = _check_name(name)


def get_backend() -> str:
    """The backend in force for layers left on ``"auto"`` (context manager, else global)."""
    return _backend_setting.current()


def use_backend(name: str) -> contextlib.AbstractContextManager:
    """Within the block, layers left on ``"auto"`` use backend ``name`` (thread-local)."""
    return _backend_setting.override(_check_name(name))


def select_backend(call: ConvCall, requested: str = "auto") -> _Backend:
    """The backend that runs ``call``: ``requested`` if given (it must support the call), else the
    one in force, else the first of :data:`BACKENDS` that supports it (and, while ``torch.compile``
    traces, that it can trace)."""
    name = requested if requested != "auto" else get_backend()
    if name != "auto":
        backend = BACKENDS[_check_name(name)]
        reason = backend.supports(call)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this convolution: {reason}")
        return backend
    compiling = is_compiling()
    return next(backend for backend in BACKENDS.values()
                if (backend.traceable or not compiling) and backend.supports(call) is None)


def may_read_host(tensor: Tensor) -> bool:
    """Whether this call may read ``tensor``'s values on the host (to crop a kernel, to check it).

    On the CPU that costs nothing. On a GPU it would stall the stream and break CUDA-graph
    capture, and under ``torch.compile`` it would break the graph, so there it is never done.
    """
    return tensor.device.type == "cpu" and not is_compiling()


def crop_to_support(
    kernel: Tensor,
    padding: Sequence[tuple[int, int]],
    support: Sequence[tuple[int, int]],
) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """Drop border taps outside ``support``, which must be zero; same output, exactly.

    Removing ``a`` leading taps of an axis and as many padded rows keeps every output reading
    the same input rows (likewise at the end), so an axis loses at most as many taps per side
    as it has padding there. Works for every padding mode: a padded value does not depend on
    how much padding there is.

    Args:
        kernel: ``(C_out, C_in / groups, *window)``.
        padding: ``(before, after)`` per axis.
        support: ``(first, last)`` window index per axis; the taps outside are zero.

    Returns:
        The cropped kernel (a view) and its ``(before, after)`` padding per axis.
    """
    slices, new_padding = [], []
    for axis, ((first, last), (before, after)) in enumerate(zip(support, padding)):
        window = kernel.shape[2 + axis]
        front, back = min(first, before), min(window - 1 - last, after)
        slices.append(slice(front, window - back))
        new_padding.append((before - front, after - back))
    if all(s.start == 0 and s.stop == kernel.shape[2 + i] for i, s in enumerate(slices)):
        return kernel, tuple(tuple(p) for p in padding)
    return kernel[(slice(None), slice(None), *slices)], tuple(new_padding)


def crop_to_reach(
    kernel: Tensor,
    input_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """Drop kernel taps that never meet the (zero-padded) input; same output, exactly.

    Along an axis with input size ``H``, padding ``(b, a)``, stride ``s`` and ``O`` outputs, tap
    ``i`` reads input rows ``o * s + i - b`` for ``o < O``: it only ever reads padding unless
    ``b - (O - 1) * s <= i <= H - 1 + b``.
    """
    slices, new_padding = [], []
    for axis, (size, step, (before, after)) in enumerate(zip(input_size, stride, padding)):
        window = kernel.shape[2 + axis]
        outputs = (size + before + after - window) // step + 1
        first = max(0, before - (outputs - 1) * step)
        last = min(window - 1, size - 1 + before)
        if outputs < 1 or first > last:
            return kernel, tuple(padding)
        slices.append(slice(first, last + 1))
        new_before = before - first
        # a negative remainder means the last rows are never read: no padding is needed there
        new_after = max(0, (outputs - 1) * step + (last + 1 - first) - size - new_before)
        new_padding.append((new_before, new_after))
    if all(s.start == 0 and s.stop == kernel.shape[2 + i] for i, s in enumerate(slices)):
        return kernel, tuple(padding)
    return kernel[(slice(None), slice(None), *slices)], tuple(new_padding)


def convolve(
    input: Tensor,
    kernel: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[tuple[int, int]],
    groups: int,
    padding_mode: str = "zeros",
    backend: str = "auto",
) -> Tensor:
    """Cross-correlate ``input`` with a dense ``kernel`` (as ``nn.ConvNd`` does).

    Args:
        input: ``(N, C_in, *spatial)`` with ``d = len(stride)`` spatial dimensions.
        kernel: ``(C_out, C_in / groups, *window)``.
        bias: ``(C_out,)`` or ``None``.
        stride: ``d`` strides.
        padding: ``d`` pairs ``(before, after)`` of padding, in axis order.
        groups: number of channel groups.
        padding_mode: one of :data:`PADDING_MODES`.
        backend: ``"auto"`` or a name in :data:`BACKENDS`.

    Returns:
        ``(N, C_out, *spatial_out)``.
    """
    if padding_mode == "zeros":
        kernel, padding = crop_to_reach(kernel, input.shape[2:], stride, padding)
    call = ConvCall.describe(input, kernel, groups, stride, padding, padding_mode)
    return select_backend(call, backend).run(input, kernel, bias, call)


def prepare_kernel(
    kernel: Tensor,
    padding: Sequence[tuple[int, int]],
    support: Callable[[], Sequence[tuple[int, int]]] | None = None,
) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """Crop ``kernel`` to ``support()`` where :func:`may_read_host` allows it (exact, see
    :func:`crop_to_support`); returns the kernel to hand to :func:`convolve` and its padding.

    Args:
        support: returns ``(first, last)`` per axis of the window taps that can be non-zero
            (called only when the crop is allowed); ``None``: no crop.
    """
    padding = tuple(tuple(p) for p in padding)
    if support is None or not may_read_host(kernel):
        return kernel, padding
    return crop_to_support(kernel, padding, support())
