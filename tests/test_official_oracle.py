"""dcls_zoo layers checked against the authors' own package, ``dcls`` 0.1.1 (``import DCLS``).

The official layers are the oracle. For each case we build an official layer, give it random
non-integer positions (and non-zero widths for "max"/"gauss"), copy its parameters into our
layer, run both in float32 on the same input and compare the outputs and the gradients of
the input, ``weight``, ``P``, ``SIG`` and ``bias``. The dense kernels are also compared with
the official ``ConstructKernel{1,2}d`` (the layers' ``DCK``).

How the parameters map (see ``dcls_zoo/layers.py`` and the notes, sections 1.3-1.6):

* 1D, all versions: same tensors.
* 2D "v0": same tensors (the official v0 reads ``P[0]`` as the row, as we do).
* 2D "v1", "max", "gauss": the official ``P[0]``/``SIG[0]`` is the column (width) axis, so
  ``ours = official.flip(0)``, and the same for their gradients.

Only odd square 2D windows and 1D are compared for all versions: the official non-square
v1/max/gauss kernels use the wrong axis size, and its even-window clamp lets an element sit one
past the window. Two narrower extras: the official "v0" 2D, which handles non-square, even and
flat windows correctly, is compared on those (positions inside the window, where its
unnormalised bilinear equals ours); and the dense kernels of cubic 3D windows, where the
official v1/max/gauss read ``(P0, P1, P2)`` as ``(W, H, D)`` (ours = ``flip(0)``) and its v0 as
``(D, W, H)`` (ours = official ``P[[0, 2, 1]]``).

The last tests check that our initialisation draws from the same ranges as the official one.
"""

from __future__ import annotations

import logging
import math
import zlib

import pytest
import torch
from helpers import official_dcls_modules

from dcls_zoo import Dcls1d, Dcls2d
from dcls_zoo.construct import construct_kernel

# every test here needs the oracle: each is skipped (and still collected) where it is not installed
pytestmark = pytest.mark.usefixtures("official_dcls")
DCLS_modules = official_dcls_modules()
if DCLS_modules is not None:
    OfficialDcls1d = DCLS_modules.Dcls1d
    OfficialDcls2d = DCLS_modules.Dcls2d
    OfficialConstructKernel1d = DCLS_modules.ConstructKernel1d
    OfficialConstructKernel2d = DCLS_modules.ConstructKernel2d
    OfficialConstructKernel3d = DCLS_modules.ConstructKernel3d

OFFICIAL_VERSIONS = ("v0", "v1", "max", "gauss")
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _silence_official_logging():
    """The official Dcls2d logs several root-logger warnings per layer (no CUDA, no GEMM)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    """``||a - b|| <= rtol ||b||`` plus an elementwise check with an atol scaled to ``max|b|``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().double()
    expected = expected.detach().double()
    scale = expected.norm().item()
    error = (actual - expected).norm().item()
    assert error <= rtol * scale + 1e-12, f"{what}: ||a-b|| = {error:.3e} > {rtol} * ||b|| = {rtol * scale:.3e}"
    atol = 10 * rtol * expected.abs().max().item() + 1e-12
    torch.testing.assert_close(actual, expected, rtol=10 * rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _off_integer_positions(shape, window: int, generator: torch.Generator) -> torch.Tensor:
    """Positions in ``[-(window//2), window//2]`` whose fractional part is in ``[0.1, 0.9]``."""
    c = window // 2
    if c == 0:
        return torch.zeros(shape)
    integer = torch.randint(-c, c, shape, generator=generator).float()  # floor in [-c, c-1]
    fraction = 0.1 + 0.8 * torch.rand(shape, generator=generator)
    return integer + fraction


def _nonzero_sigmas(shape, generator: torch.Generator) -> torch.Tensor:
    """Widths ``SIG`` of both signs with ``|SIG|`` in ``[0.1, 1.2]`` (away from the |.| kink)."""
    magnitude = 0.1 + 1.1 * torch.rand(shape, generator=generator)
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    return magnitude * sign


def _official_layer(dims: int, cfg: dict, version: str):
    common = dict(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        kernel_count=cfg["kernel_count"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        dilated_kernel_size=cfg["window"],
        groups=cfg["groups"],
        bias=cfg["bias"],
        padding_mode=cfg["padding_mode"],
        version=version,
    )
    if dims == 1:
        return OfficialDcls1d(**common)
    return OfficialDcls2d(**common, use_implicit_gemm=False)


def _our_layer(dims: int, cfg: dict, version: str):
    cls = Dcls1d if dims == 1 else Dcls2d
    return cls(
        cfg["in_channels"],
        cfg["out_channels"],
        cfg["kernel_count"],
        cfg["window"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        groups=cfg["groups"],
        bias=cfg["bias"],
        padding_mode=cfg["padding_mode"],
        version=version,
    )


def _axis_map(dims: int, version: str):
    """official P/SIG -> ours (an involution, so it also maps our gradients back)."""
    if dims == 2 and version != "v0":
        return lambda t: t.flip(0)
    return lambda t: t


def _randomise_official(layer, window: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
        layer.P.copy_(_off_integer_positions(layer.P.shape, window, generator))
        if layer.SIG is not None:
            layer.SIG.copy_(_nonzero_sigmas(layer.SIG.shape, generator))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))


def _copy_into_ours(official, ours, mapping) -> None:
    with torch.no_grad():
        ours.weight.copy_(official.weight)
        ours.P.copy_(mapping(official.P))
        assert (official.SIG is None) == (ours.SIG is None)
        if official.SIG is not None:
            ours.SIG.copy_(mapping(official.SIG))
        assert (official.bias is None) == (ours.bias is None)
        if official.bias is not None:
            ours.bias.copy_(official.bias)


# Layer configurations: depthwise, grouped, dense, with and without bias, stride 2, several
# paddings (none, "same"-like, asymmetric per axis, reflect), one and several elements, odd windows.
CONFIGS_2D = {
    "depthwise_K3_s7_pad3": dict(in_channels=4, out_channels=4, groups=4, kernel_count=3, window=7,
                                 stride=1, padding=3, bias=True, padding_mode="zeros", input=(2, 11, 9)),
    "grouped_K2_s5_stride2_nobias": dict(in_channels=4, out_channels=6, groups=2, kernel_count=2, window=5,
                                         stride=2, padding=1, bias=False, padding_mode="zeros", input=(2, 10, 12)),
    "dense_K1_s9_pad1x2": dict(in_channels=3, out_channels=2, groups=1, kernel_count=1, window=9,
                               stride=1, padding=(1, 2), bias=True, padding_mode="zeros", input=(1, 12, 10)),
    "dense_K5_s5_nopad_stride2x1": dict(in_channels=2, out_channels=3, groups=1, kernel_count=5, window=5,
                                        stride=(2, 1), padding=0, bias=True, padding_mode="zeros", input=(2, 9, 8)),
    "grouped_K4_s5_reflect": dict(in_channels=2, out_channels=4, groups=2, kernel_count=4, window=5,
                                  stride=1, padding=2, bias=True, padding_mode="reflect", input=(2, 8, 7)),
    "dense_K2_s7_replicate_pad1x3_stride1x2": dict(in_channels=2, out_channels=2, groups=1, kernel_count=2,
                                                   window=7, stride=(1, 2), padding=(1, 3), bias=True,
                                                   padding_mode="replicate", input=(1, 9, 8)),
}
CONFIGS_1D = {
    "depthwise_K3_s7_pad3": dict(in_channels=4, out_channels=4, groups=4, kernel_count=3, window=7,
                                 stride=1, padding=3, bias=True, padding_mode="zeros", input=(2, 15)),
    "grouped_K2_s5_stride2_nobias": dict(in_channels=4, out_channels=6, groups=2, kernel_count=2, window=5,
                                         stride=2, padding=1, bias=False, padding_mode="zeros", input=(2, 13)),
    "dense_K1_s9_pad2": dict(in_channels=3, out_channels=2, groups=1, kernel_count=1, window=9,
                             stride=1, padding=2, bias=True, padding_mode="zeros", input=(1, 12)),
    "dense_K6_s9_nopad": dict(in_channels=2, out_channels=3, groups=1, kernel_count=6, window=9,
                              stride=1, padding=0, bias=True, padding_mode="zeros", input=(2, 14)),
    "grouped_K4_s5_circular": dict(in_channels=2, out_channels=4, groups=2, kernel_count=4, window=5,
                                   stride=1, padding=2, bias=True, padding_mode="circular", input=(2, 9)),
    "dense_K2_s7_reflect_pad3_stride2": dict(in_channels=2, out_channels=2, groups=1, kernel_count=2, window=7,
                                             stride=2, padding=3, bias=False, padding_mode="reflect", input=(1, 11)),
}

LAYER_CASES = [
    pytest.param(dims, name, version, id=f"{dims}d-{name}-{version}")
    for dims, configs in ((1, CONFIGS_1D), (2, CONFIGS_2D))
    for name in configs
    for version in OFFICIAL_VERSIONS
]


@pytest.mark.parametrize("dims, config_name, version", LAYER_CASES)
def test_layer_matches_official_forward_and_backward(dims, config_name, version):
    cfg = (CONFIGS_1D if dims == 1 else CONFIGS_2D)[config_name]
    seed = zlib.crc32(f"{dims}-{config_name}-{version}".encode())
    torch.manual_seed(seed)
    official = _official_layer(dims, cfg, version)
    ours = _our_layer(dims, cfg, version)
    mapping = _axis_map(dims, version)
    _randomise_official(official, cfg["window"], seed)
    _copy_into_ours(official, ours, mapping)

    generator = torch.Generator().manual_seed(seed + 1)
    batch, *spatial = cfg["input"]
    _compare_forward_backward(official, ours, torch.randn(batch, cfg["in_channels"], *spatial, generator=generator),
                              generator)
    assert_close_rel(ours.P.grad, mapping(official.P.grad), what="grad P")
    if official.SIG is not None:
        assert official.SIG.grad.abs().max() > 0, "official SIG gradient is trivially zero"
        assert_close_rel(ours.SIG.grad, mapping(official.SIG.grad), what="grad SIG")


def _compare_forward_backward(official, ours, x: torch.Tensor, generator: torch.Generator) -> None:
    """Same input through both layers: outputs, then gradients of input, weight and bias agree."""
    x_official, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_official, out_ours = official(x_official), ours(x_ours)
    assert out_ours.shape == out_official.shape
    assert_close_rel(out_ours, out_official, what="output")
    cotangent = torch.randn(out_official.shape, generator=generator)
    (out_official * cotangent).sum().backward()
    (out_ours * cotangent).sum().backward()
    assert_close_rel(x_ours.grad, x_official.grad, what="grad input")
    assert_close_rel(ours.weight.grad, official.weight.grad, what="grad weight")
    if official.bias is not None:
        assert_close_rel(ours.bias.grad, official.bias.grad, what="grad bias")


KERNEL_CASES = [
    pytest.param(dims, window, count, version, id=f"{dims}d-s{window}-K{count}-{version}")
    for dims, window, count in ((1, 5, 3), (1, 9, 1), (2, 5, 4), (2, 7, 1), (2, 9, 6))
    for version in OFFICIAL_VERSIONS
]


@pytest.mark.parametrize("dims, window, count, version", KERNEL_CASES)
def test_dense_kernel_matches_official_construct_kernel(dims, window, count, version):
    """Our ``construct_kernel`` and ``layer.kernel()`` against the official ``DCK(W, P, SIG)``."""
    out_channels, in_channels, groups = 4, 6, 2
    generator = torch.Generator().manual_seed(7 * window + count + 100 * dims)
    element_shape = (out_channels, in_channels // groups, count)
    weight = torch.randn(element_shape, generator=generator)
    P = _off_integer_positions((dims, *element_shape), window, generator)
    SIG = _nonzero_sigmas((dims, *element_shape), generator) if version in ("max", "gauss") else None
    windows = (window,) * dims
    construct = OfficialConstructKernel1d if dims == 1 else OfficialConstructKernel2d
    dck = construct(out_channels, in_channels, groups, count, windows, version)
    expected = dck(weight, P, SIG)
    assert expected.shape == (out_channels, in_channels // groups, *windows)

    mapping = _axis_map(dims, version)
    ours_functional = construct_kernel(weight, mapping(P), None if SIG is None else mapping(SIG), windows, version)
    assert_close_rel(ours_functional, expected, what="construct_kernel")

    layer = (Dcls1d if dims == 1 else Dcls2d)(in_channels, out_channels, count, window, groups=groups, version=version)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.P.copy_(mapping(P))
        if SIG is not None:
            layer.SIG.copy_(mapping(SIG))
    assert_close_rel(layer.kernel(), expected, what="layer.kernel()")


def test_official_v1_and_v0_differ_by_axis_order_as_documented():
    """Guards the axis mapping used above: with the same tensors v0 and v1 give transposed kernels,
    and our kernel equals v0's for our order and v1's for the flipped order."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 1, 3, generator=generator)
    P = _off_integer_positions((2, 2, 1, 3), 7, generator)
    v0 = OfficialConstructKernel2d(2, 1, 1, 3, (7, 7), "v0")(weight, P, None)
    v1 = OfficialConstructKernel2d(2, 1, 1, 3, (7, 7), "v1")(weight, P, None)
    assert (v0 - v1).abs().max() > 1e-2
    assert_close_rel(v0, v1.transpose(-1, -2), what="v0 vs v1^T")
    assert_close_rel(construct_kernel(weight, P, None, (7, 7), "bilinear"), v0, what="ours vs v0")
    assert_close_rel(construct_kernel(weight, P.flip(0), None, (7, 7), "bilinear"), v1, what="ours vs v1")


@pytest.mark.parametrize("dims, window, version", [(1, 5, "gauss"), (2, 7, "v0"), (2, 5, "v1"), (2, 9, "gauss")])
def test_clamp_positions_matches_official_clamp_parameters(dims, window, version):
    cfg = dict(in_channels=2, out_channels=4, groups=1, kernel_count=5, window=window,
               stride=1, padding=0, bias=False, padding_mode="zeros")
    official = _official_layer(dims, cfg, version)
    ours = _our_layer(dims, cfg, version)
    mapping = _axis_map(dims, version)
    generator = torch.Generator().manual_seed(window)
    with torch.no_grad():
        official.P.copy_(3 * window * (torch.rand(official.P.shape, generator=generator) - 0.5))
        ours.P.copy_(mapping(official.P))
    official.clamp_parameters()
    ours.clamp_positions_()
    assert (official.P.detach().abs() == window // 2).any()
    torch.testing.assert_close(ours.P.detach(), mapping(official.P.detach()), rtol=0, atol=0)


def _inside_window_positions(shape, window: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``(len(window), *shape)`` non-integer positions whose index ``p + s // 2`` lies in
    ``(0, s - 1)`` (also for even ``s``); 0 along flat axes."""
    axes = []
    for size in window:
        low, high = -(size // 2), size - 1 - size // 2
        if low == high:
            axes.append(torch.zeros(shape))
            continue
        integer = torch.randint(low, high, shape, generator=generator).float()
        axes.append(integer + 0.1 + 0.8 * torch.rand(shape, generator=generator))
    return torch.stack(axes)


@pytest.mark.parametrize("window", [(5, 9), (9, 5), (9, 4), (4, 6), (7, 1), (1, 7)], ids=lambda w: f"{w[0]}x{w[1]}")
def test_nonsquare_2d_matches_official_v0(window):
    """The official v0 reads P[0] as the row with per-axis centring, so it is a valid oracle for
    non-square, even and flat windows (the case the official v1/gauss get wrong)."""
    cfg = dict(in_channels=4, out_channels=4, groups=2, kernel_count=3, window=window, stride=(1, 2),
               padding=(window[0] // 2, 1), bias=True, padding_mode="zeros")
    official = _official_layer(2, cfg, "v0")
    ours = _our_layer(2, cfg, "v0")
    generator = torch.Generator().manual_seed(sum(window))
    with torch.no_grad():
        official.weight.copy_(torch.randn(official.weight.shape, generator=generator))
        official.P.copy_(_inside_window_positions(official.P.shape[1:], window, generator))
        official.bias.copy_(torch.randn(official.bias.shape, generator=generator))
    _copy_into_ours(official, ours, lambda t: t)
    assert_close_rel(ours.kernel(), official.DCK(official.weight, official.P, None), what="kernel")

    _compare_forward_backward(official, ours, torch.randn(2, 4, window[0] + 4, window[1] + 5, generator=generator),
                              generator)
    # Along a flat axis the official unnormalised v0 loses mass when P moves off 0 while our
    # normalised footprint keeps it (gradient 0): compare P gradients on the non-flat axes only.
    for axis, size in enumerate(window):
        if size > 1:
            assert_close_rel(ours.P.grad[axis], official.P.grad[axis], what=f"grad P[{axis}]")


@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("version", OFFICIAL_VERSIONS)
def test_cubic_3d_kernel_matches_official(window, version):
    out_channels, in_channels, groups, count = 2, 4, 2, 3
    generator = torch.Generator().manual_seed(window + 10 * OFFICIAL_VERSIONS.index(version))
    element_shape = (out_channels, in_channels // groups, count)
    weight = torch.randn(element_shape, generator=generator)
    P = _off_integer_positions((3, *element_shape), window, generator)
    SIG = _nonzero_sigmas((3, *element_shape), generator) if version in ("max", "gauss") else None
    windows = (window,) * 3
    expected = OfficialConstructKernel3d(out_channels, in_channels, groups, count, windows, version)(weight, P, SIG)

    def mapping(t):
        return t[[0, 2, 1]] if version == "v0" else t.flip(0)

    ours = construct_kernel(weight, mapping(P), None if SIG is None else mapping(SIG), windows, version)
    assert_close_rel(ours, expected, what="3D kernel")


# ---------------------------------------------------------------------------------------------
# Initialisation: same distributions and ranges as the official layers.
# ---------------------------------------------------------------------------------------------

INIT_CASES = [
    pytest.param(dims, window, version, id=f"{dims}d-s{window}-{version}")
    for dims, window in ((1, 3), (1, 9), (2, 3), (2, 7))
    for version in OFFICIAL_VERSIONS
]


@pytest.mark.parametrize("dims, window, version", INIT_CASES)
def test_initialisation_ranges_match_official(dims, window, version):
    torch.manual_seed(dims * 100 + window)
    in_channels, out_channels, groups, count = 8, 16, 2, 13
    cfg = dict(in_channels=in_channels, out_channels=out_channels, groups=groups, kernel_count=count,
               window=window, stride=1, padding=0, bias=True, padding_mode="zeros")
    official = _official_layer(dims, cfg, version)
    ours = _our_layer(dims, cfg, version)

    # Kaiming-uniform with a = sqrt(5): bound = gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)),
    # i.e. 1 / sqrt(fan_in), fan_in = (C_in / groups) * kernel_count; bias bound is the same.
    fan_in = (in_channels // groups) * count
    gain = math.sqrt(2.0 / (1.0 + 5.0))
    bound = gain * math.sqrt(3.0 / fan_in)
    for layer, who in ((official, "official"), (ours, "ours")):
        w = layer.weight.detach()
        assert w.shape == (out_channels, in_channels // groups, count), who
        assert w.abs().max() <= bound * (1 + 1e-6), who
        assert w.abs().max() >= 0.95 * bound, who  # 1664 draws: the extremes come close to the bound
        # uniform(-b, b): std b / sqrt(3), mean 0
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3), who
        assert abs(w.mean().item()) < 0.1 * bound, who
        b = layer.bias.detach()
        assert b.abs().max() <= bound * (1 + 1e-6), who

    # Positions: N(0, 0.5) clamped in place to +-(window // 2); same distribution for both.
    lim = window // 2
    for layer, who in ((official, "official"), (ours, "ours")):
        P = layer.P.detach()
        assert P.shape == (dims, out_channels, in_channels // groups, count), who
        assert P.min() >= -lim and P.max() <= lim, who
    P_ours, P_official = ours.P.detach(), official.P.detach()
    assert abs(P_ours.std().item() - P_official.std().item()) < 0.06
    assert abs(P_ours.mean().item()) < 0.06
    if window == 3:
        # P(|N(0, 0.5)| > 1) ~ 4.6 %: both clamp the same fraction of positions onto the bounds.
        at_bound_ours = (P_ours.abs() == lim).float().mean().item()
        at_bound_official = (P_official.abs() == lim).float().mean().item()
        assert 0.02 < at_bound_official < 0.08
        assert abs(at_bound_ours - at_bound_official) < 0.03
    else:
        assert abs(P_ours.std().item() - 0.5) < 0.03

    if version in ("max", "gauss"):
        expected_sig = 0.23 if version == "gauss" else 0.0
        assert torch.all(official.SIG == expected_sig)
        assert ours.SIG is not None and ours.SIG.shape == official.SIG.shape
        assert torch.all(ours.SIG == expected_sig)
    else:
        assert official.SIG is None and ours.SIG is None


@pytest.mark.parametrize("version", ["v1", "max", "gauss"])
def test_kernels_match_official_right_after_initialisation(version):
    """With the initial SIG (0 / 0.23) and clamped initial positions, including ones on the bounds."""
    torch.manual_seed(11)
    cfg = dict(in_channels=4, out_channels=4, groups=4, kernel_count=20, window=3,
               stride=1, padding=1, bias=True, padding_mode="zeros")
    official = _official_layer(2, cfg, version)
    assert (official.P.detach().abs() == 1).any(), "expected some positions clamped on the bound"
    ours = _our_layer(2, cfg, version)
    _copy_into_ours(official, ours, _axis_map(2, version))
    assert_close_rel(ours.kernel(), official.DCK(official.weight, official.P, official.SIG), what="kernel")
