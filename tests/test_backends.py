"""Convolution backends: every path against the plain reference, kernel cropping, dispatch rules."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from dcls_zoo import Dcls1d, Dcls2d, Dcls3d, backends
from dcls_zoo.backends import (
    BACKENDS,
    ConvCall,
    crop_to_reach,
    crop_to_support,
    select_backend,
    set_backend,
    use_backend,
)

LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _outputs_and_grads(layer, x, backend):
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with use_backend(backend):
        y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    return y.detach(), x.grad, grads


CASES = [
    # dims, channels, window, spatial, stride, padding, padding_mode
    (2, 6, 17, 20, 1, "same", "zeros"),
    (2, 6, 17, 7, 1, "same", "zeros"),  # map smaller than the kernel: cropped
    (2, 6, 17, 3, 1, 8, "zeros"),
    (2, 4, 9, 13, 2, 4, "zeros"),
    (2, 4, (7, 4), 10, 1, "same", "zeros"),  # even window: asymmetric padding
    (2, 4, 5, 9, 2, "valid", "zeros"),
    (2, 4, 7, 9, 1, 3, "reflect"),
    (2, 4, 5, 8, (2, 1), (1, 2), "circular"),
    (1, 5, 25, 30, 1, "same", "zeros"),
    (1, 5, 9, 12, 3, 2, "replicate"),
    (3, 3, (5, 7, 3), 6, 1, "same", "zeros"),
    (3, 3, 5, 7, 2, 2, "zeros"),
]


@pytest.mark.parametrize("dims,channels,window,spatial,stride,padding,padding_mode", CASES)
@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
def test_cpu_depthwise_matches_native(dims, channels, window, spatial, stride, padding, padding_mode, version):
    torch.manual_seed(0)
    layer = LAYERS[dims](channels, channels, 4, window, stride=stride, padding=padding, groups=channels,
                         padding_mode=padding_mode, version=version)
    x = torch.randn(3, channels, *[spatial] * dims)
    call = ConvCall.describe(x, layer.kernel(), channels, layer.stride, layer._padding_pairs, padding_mode)
    assert select_backend(call) is BACKENDS["cpu_depthwise"]
    y_fast, gx_fast, g_fast = _outputs_and_grads(layer, x, "cpu_depthwise")
    y_ref, gx_ref, g_ref = _outputs_and_grads(layer, x, "native")
    assert _relative(y_fast, y_ref) < 1e-5
    assert _relative(gx_fast, gx_ref) < 1e-5
    for name in g_ref:
        assert _relative(g_fast[name], g_ref[name]) < 1e-5, name


@pytest.mark.parametrize("dims,stride,padding", [(1, 2, 3), (2, 1, "same"), (2, 2, 1), (3, 1, 2)])
def test_cpu_depthwise_gradcheck(dims, stride, padding):
    torch.manual_seed(1)
    channels = 2
    x = torch.randn(2, channels, *[5] * dims, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(channels, 1, *[3] * dims, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    pairs = tuple((p, p) for p in ([1] * dims if padding == "same" else [padding] * dims))

    def run(x, kernel, bias):
        return backends.convolve(x, kernel, bias, (stride,) * dims, pairs, channels, "zeros", "cpu_depthwise")

    assert torch.autograd.gradcheck(run, (x, kernel, bias))


@pytest.mark.parametrize("size,window,stride,padding", [
    (7, 17, 1, (8, 8)), (3, 17, 1, (8, 8)), (7, 17, 2, (8, 8)), (10, 9, 3, (4, 4)), (5, 13, 1, (2, 10)),
    (1, 7, 1, (3, 3)), (12, 5, 2, (0, 0)),
])
def test_crop_to_reach_is_exact(size, window, stride, padding):
    torch.manual_seed(2)
    x = torch.randn(2, 3, size)
    kernel = torch.randn(3, 1, window)
    cropped, new_padding = crop_to_reach(kernel, (size,), (stride,), (padding,))
    reference = F.conv1d(F.pad(x, padding), kernel, stride=stride, groups=3)
    result = F.conv1d(F.pad(x, new_padding[0]), cropped, stride=stride, groups=3)
    torch.testing.assert_close(result, reference)
    if size + 1 < window // 2:
        assert cropped.shape[-1] < window


@pytest.mark.parametrize("window,support,padding,stride,mode,expected", [
    (17, (6, 10), (8, 8), 1, "zeros", (6, 10)),  # centre of a "same" kernel
    (17, (2, 16), (8, 8), 1, "zeros", (2, 16)),  # lopsided
    (9, (1, 7), (0, 0), 1, "zeros", (0, 8)),  # no padding: nothing may go
    (9, (3, 6), (1, 4), 2, "zeros", (1, 6)),  # as much as each side's padding allows
    (11, (4, 6), (5, 5), 3, "reflect", (4, 6)),
    (11, (0, 10), (5, 5), 1, "zeros", (0, 10)),
])
def test_crop_to_support_is_exact(window, support, padding, stride, mode, expected):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 12)
    kernel = torch.zeros(3, 1, window)
    kernel[..., support[0]:support[1] + 1] = torch.randn(3, 1, support[1] - support[0] + 1)
    cropped, new_padding = crop_to_support(kernel, (padding,), (support,))
    pad_mode = "constant" if mode == "zeros" else mode
    reference = F.conv1d(F.pad(x, padding, mode=pad_mode), kernel, stride=stride, groups=3)
    result = F.conv1d(F.pad(x, new_padding[0], mode=pad_mode), cropped, stride=stride, groups=3)
    torch.testing.assert_close(result, reference)
    torch.testing.assert_close(cropped, kernel[..., expected[0]:expected[1] + 1])


def test_crop_removes_unreachable_taps_of_a_17x17_kernel_on_7x7_maps():
    kernel = torch.randn(4, 1, 17, 17)
    cropped, padding = crop_to_reach(kernel, (7, 7), (1, 1), ((8, 8), (8, 8)))
    assert cropped.shape[-2:] == (13, 13) and padding == ((6, 6), (6, 6))


def _call(**overrides) -> ConvCall:
    facts = dict(device_type="cuda", dtype=torch.float32, channels_last=False, depthwise=True, stride=(1, 1),
                 padding=((8, 8), (8, 8)), window=(17, 17), padding_mode="zeros")
    facts.update(overrides)
    return ConvCall(**facts)


@pytest.fixture
def fake_implicit_gemm(monkeypatch):
    """An importable stand-in for the optional CUDA extension (same API, computed with F.conv2d)."""
    calls = []

    class _Fp32(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            calls.append(x.dtype)
            return F.conv2d(x, w, padding=w.shape[-1] // 2, groups=w.shape[0])

    module = types.ModuleType("depthwise_conv2d_implicit_gemm")
    module._DepthWiseConv2dImplicitGEMMFP32 = _Fp32
    module._DepthWiseConv2dImplicitGEMMFP16 = _Fp32
    monkeypatch.setitem(sys.modules, "depthwise_conv2d_implicit_gemm", module)
    monkeypatch.setattr(type(BACKENDS["implicit_gemm"]), "_module", None)
    monkeypatch.setattr(type(BACKENDS["implicit_gemm"]), "_import_error", None)
    return calls


def test_implicit_gemm_is_chosen_only_when_its_constraints_hold(fake_implicit_gemm):
    assert select_backend(_call()) is BACKENDS["implicit_gemm"]
    assert select_backend(_call(dtype=torch.float16)) is BACKENDS["implicit_gemm"]
    for facts in (dict(dtype=torch.bfloat16), dict(stride=(2, 2)), dict(channels_last=True),
                  dict(padding=((7, 7), (8, 8))), dict(window=(16, 16), padding=((8, 8), (8, 8))),
                  dict(depthwise=False), dict(padding_mode="reflect"), dict(device_type="cpu")):
        chosen = select_backend(_call(**facts))
        assert chosen is not BACKENDS["implicit_gemm"], facts
    assert select_backend(_call(dtype=torch.bfloat16)) is BACKENDS["native"]  # a clean fallback


def test_implicit_gemm_run_applies_the_extension_and_adds_bias(fake_implicit_gemm):
    x, kernel, bias = torch.randn(2, 3, 9, 9), torch.randn(3, 1, 5, 5), torch.randn(3)
    out = BACKENDS["implicit_gemm"].run(x, kernel, bias, _call(window=(5, 5), padding=((2, 2), (2, 2))))
    torch.testing.assert_close(out, F.conv2d(x, kernel, bias, padding=2, groups=3))
    assert fake_implicit_gemm == [torch.float32]


def test_missing_extension_costs_nothing_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "depthwise_conv2d_implicit_gemm", None)  # import raises
    monkeypatch.setattr(type(BACKENDS["implicit_gemm"]), "_module", None)
    monkeypatch.setattr(type(BACKENDS["implicit_gemm"]), "_import_error", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_backend(_call()) is BACKENDS["native"]
    assert "not importable" in BACKENDS["implicit_gemm"].supports(_call())


def test_auto_passes_over_the_extension_while_compiling(fake_implicit_gemm):
    """Importing the extension and calling its kernels would break a compiled graph at every
    layer: while dynamo traces, "auto" convolves natively; eager calls still get the extension."""

    def native_chosen(x: torch.Tensor) -> torch.Tensor:
        return x + (select_backend(_call()) is BACKENDS["native"])

    assert torch.compile(native_chosen, backend="eager", fullgraph=True)(torch.zeros(1)).item() == 1
    assert select_backend(_call()) is BACKENDS["implicit_gemm"]
    assert select_backend(_call(), "implicit_gemm") is BACKENDS["implicit_gemm"]  # asked for by name


def test_dispatch_picks_per_call():
    depthwise = ConvCall.describe(torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), 4, (1, 1), ((1, 1), (1, 1)), "zeros")
    dense = ConvCall.describe(torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3), 1, (1, 1), ((1, 1), (1, 1)), "zeros")
    half = ConvCall.describe(torch.randn(1, 4, 8, 8).bfloat16(), torch.randn(4, 1, 3, 3).bfloat16(), 4, (1, 1),
                             ((1, 1), (1, 1)), "zeros")
    assert select_backend(depthwise).name == "cpu_depthwise"
    assert select_backend(dense).name == "native"
    assert select_backend(half).name == "native"


def test_overrides_layer_context_and_global():
    layer = Dcls2d(4, 4, 3, 7, padding="same", groups=4, backend="native")
    x = torch.randn(1, 4, 9, 9)
    assert "backend='native'" in repr(layer)
    with use_backend("cpu_depthwise"):
        assert backends.get_backend() == "cpu_depthwise"
        layer(x)  # the layer's own choice wins over the context
    try:
        set_backend("native")
        assert backends.get_backend() == "native"
        with use_backend("auto"):
            assert backends.get_backend() == "auto"
    finally:
        set_backend("auto")
    dense = Dcls2d(4, 6, 3, 7, padding="same", backend="cpu_depthwise")
    with pytest.raises(ValueError, match="backend 'cpu_depthwise' cannot run this convolution: not a depthwise"):
        dense(x)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        Dcls2d(4, 4, 3, 7, backend="fast")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with use_backend("fast"):
            pass
