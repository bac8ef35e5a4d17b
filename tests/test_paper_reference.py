"""dcls_zoo checked against an independent, deliberately plain re-implementation of the papers.

The reference below does not use ``dcls_zoo.construct``. It works element by element and grid
point by grid point on Python floats:

* **bilinear**: Algorithm 1 of the seed paper (Khalfaoui-Hassani, Pellegrini, Masquelier,
  "Dilated convolution with learnable spacings", ICLR 2023), with the 1D and 3D analogues of its
  appendix. For every kernel element, shift the centred position by ``s // 2``, take its floor
  and fractional remainder ``r`` along each axis, and scatter the weight into a zero kernel at the
  ``2^d`` neighbouring grid points with weights ``prod_i (r_i or 1 - r_i)``. No normalisation:
  for positions inside the window the ``2^d`` corner weights already sum to one.
* **triangle** and **gauss** (the follow-up "DCLS: beyond bilinear interpolation", and the
  official ``max``/``gauss``): for every element and every grid point ``u`` of the window,
  ``prod_i relu(sigma_i - |u_i - q_i|)`` with ``sigma = |SIG| + 1``, or
  ``exp(-1/2 sum_i ((u_i - q_i) / sigma_i)^2)`` with ``sigma = |SIG| + 0.27``; the footprint is
  divided by its sum over the **whole window** (computed by brute force, so the separability our
  implementation relies on is checked, not assumed) and multiplied by the element's weight.

Axes are in PyTorch order (``P[i]`` moves along kernel axis ``i``), windows may be non-square,
even-sized or flat (size 1 along an axis, which the official package gets wrong), and a subset of
axes may carry learned positions (the other axes are dense: one independent DCLS kernel per dense
tap). Our implementation adds 1e-7 to each per-axis normaliser, so comparisons use a relative
tolerance of 1e-6 in float64.

Further checks: integer positions on a regular grid reproduce a dilated ``nn.Conv1d/2d``, and
``torch.autograd.gradcheck`` of whole layers with respect to the input, weight, P, SIG and bias.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcls_zoo import Dcls1d, Dcls2d, Dcls3d
from dcls_zoo.construct import construct_kernel

LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
VERSIONS = ("bilinear", "triangle", "gauss")
RTOL = 1e-6


# ---------------------------------------------------------------------------------------------
# The independent reference.
# ---------------------------------------------------------------------------------------------


def paper_bilinear_footprint(q: list[float], window: tuple[int, ...]) -> dict[tuple[int, ...], float]:
    """Algorithm 1 for one element at index-space position ``q`` (already shifted by ``s // 2``).

    Returns the grid points inside the window that receive a share, with their share.
    """
    floors = [math.floor(v) for v in q]
    remainders = [v - f for v, f in zip(q, floors)]
    shares: dict[tuple[int, ...], float] = {}
    for corner in itertools.product((0, 1), repeat=len(q)):
        index = tuple(f + c for f, c in zip(floors, corner))
        if not all(0 <= i < s for i, s in zip(index, window)):
            continue  # the paper drops what falls outside the kernel
        share = 1.0
        for c, r in zip(corner, remainders):
            share *= r if c else 1.0 - r
        shares[index] = shares.get(index, 0.0) + share
    return shares


def normalised_footprint(
    version: str, q: list[float], sig: list[float], window: tuple[int, ...]
) -> dict[tuple[int, ...], float]:
    """Triangle or Gaussian footprint of one element, evaluated at every grid point of the
    window and divided by its sum over the window."""
    values: dict[tuple[int, ...], float] = {}
    for u in itertools.product(*(range(s) for s in window)):
        if version == "triangle":
            value = 1.0
            for ui, qi, si in zip(u, q, sig):
                width = abs(si) + 1.0
                value *= max(0.0, width - abs(ui - qi))
        elif version == "gauss":
            exponent = 0.0
            for ui, qi, si in zip(u, q, sig):
                width = abs(si) + 0.27
                exponent += ((ui - qi) / width) ** 2
            value = math.exp(-0.5 * exponent)
        else:
            raise ValueError(version)
        values[u] = value
    total = sum(values.values())
    return {u: v / total for u, v in values.items()}


def reference_kernel(
    weight: torch.Tensor,
    P: torch.Tensor,
    SIG: torch.Tensor | None,
    window: tuple[int, ...],
    version: str,
    learned_axes: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Dense kernel ``(C_out, C_in/g, *window)`` from ``weight (C_out, C_in/g, *dense, K)`` and
    ``P``/``SIG`` ``(len(learned_axes), C_out, C_in/g, *dense, K)``, by explicit loops.

    ``learned_axes`` (default: all) are the kernel axes with learned positions; along the other
    (dense) axes every tap ``t`` gets its own DCLS kernel over the learned axes, built from
    ``weight[..., t, :]`` and ``P[:, ..., t, :]``.
    """
    dims = len(window)
    learned = tuple(range(dims)) if learned_axes is None else tuple(learned_axes)
    dense = [a for a in range(dims) if a not in learned]
    learned_window = tuple(window[a] for a in learned)
    dense_window = tuple(window[a] for a in dense)
    c_out, c_in, count = weight.shape[0], weight.shape[1], weight.shape[-1]
    assert tuple(weight.shape) == (c_out, c_in, *dense_window, count)
    w_list = weight.tolist()
    p_list = P.tolist()
    s_list = None if SIG is None else SIG.tolist()

    def pick(nested, indices):
        for i in indices:
            nested = nested[i]
        return nested

    kernel = torch.zeros(c_out, c_in, *window, dtype=torch.float64)
    for o, i in itertools.product(range(c_out), range(c_in)):
        for tap in itertools.product(*(range(s) for s in dense_window)):
            for k in range(count):
                w = pick(w_list, (o, i, *tap, k))
                q = [pick(p_list, (a, o, i, *tap, k)) + s // 2 for a, s in enumerate(learned_window)]
                if version == "bilinear":
                    shares = paper_bilinear_footprint(q, learned_window)
                else:
                    sig = [pick(s_list, (a, o, i, *tap, k)) for a in range(len(learned))]
                    shares = normalised_footprint(version, q, sig, learned_window)
                for sub_index, share in shares.items():
                    full = [0] * dims
                    for axis, value in zip(dense, tap):
                        full[axis] = value
                    for axis, value in zip(learned, sub_index):
                        full[axis] = value
                    kernel[(o, i, *full)] += w * share
    return kernel


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    """``||a - b|| <= rtol ||b||`` plus an elementwise check with an atol scaled to ``max|b|``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().double()
    expected = expected.detach().double()
    error = (actual - expected).norm().item()
    scale = expected.norm().item()
    assert error <= rtol * scale + 1e-300, f"{what}: ||a-b|| = {error:.3e} > {rtol} * ||b|| = {rtol * scale:.3e}"
    atol = 10 * rtol * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=10 * rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def bounds(size: int) -> tuple[int, int]:
    """Centred positions whose index ``p + size // 2`` lies in ``[0, size - 1]``."""
    return -(size // 2), size - 1 - size // 2


def random_positions(shape, window: tuple[int, ...], generator: torch.Generator, on_bounds: bool = True) -> torch.Tensor:
    """``(len(window), *shape)`` positions inside the window, fractional parts in [0.1, 0.9];
    with ``on_bounds`` the first element of every kernel sits on the lower/upper window edges."""
    axes = []
    for size in window:
        low, high = bounds(size)
        if low == high:  # flat axis: the only position inside the window
            axes.append(torch.full(shape, float(low), dtype=torch.float64))
            continue
        integer = torch.randint(low, high, shape, generator=generator).double()
        fraction = 0.1 + 0.8 * torch.rand(shape, generator=generator, dtype=torch.float64)
        p = integer + fraction
        if on_bounds and shape[-1] > 1:
            p[..., 0] = float(low) if torch.rand((), generator=generator) < 0.5 else float(high)
        axes.append(p)
    return torch.stack(axes)


def random_sigmas(shape, generator: torch.Generator) -> torch.Tensor:
    """Both signs, ``|SIG|`` in [0.1, 1.6]: widths from narrow to wider than a small window."""
    magnitude = 0.1 + 1.5 * torch.rand(shape, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0).double()
    return magnitude * sign


def make_layer(window, version, *, in_channels=2, out_channels=4, groups=2, count=3, learned_axes=None, **kwargs):
    layer = LAYERS[len(window)](
        in_channels, out_channels, count, window, groups=groups, version=version,
        learned_axes=learned_axes, dtype=torch.float64, **kwargs,
    )
    return layer


def randomise(layer, seed: int, on_bounds: bool = True) -> None:
    generator = torch.Generator().manual_seed(seed)
    learned_window = tuple(layer.dilated_kernel_size[a] for a in layer.learned_axes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
        layer.P.copy_(random_positions(layer.P.shape[1:], learned_window, generator, on_bounds))
        if layer.SIG is not None:
            layer.SIG.copy_(random_sigmas(layer.SIG.shape, generator))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Dense kernel vs the reference.
# ---------------------------------------------------------------------------------------------

WINDOWS = [
    (7,), (6,), (1,),
    (5, 9), (9, 4), (4, 6), (7, 7), (7, 1), (1, 7),
    (3, 5, 7), (4, 1, 5), (2, 3, 3),
]
KERNEL_CASES = [
    pytest.param(window, version, id=f"{'x'.join(map(str, window))}-{version}")
    for window in WINDOWS
    for version in VERSIONS
]


@pytest.mark.parametrize("window, version", KERNEL_CASES)
def test_kernel_matches_paper_reference(window, version):
    layer = make_layer(window, version)
    seed = sum(window) * 31 + len(window) * 7 + VERSIONS.index(version)
    randomise(layer, seed)
    expected = reference_kernel(layer.weight, layer.P, layer.SIG, window, version)

    assert_close_rel(layer.kernel(), expected, what="layer.kernel()")
    functional = construct_kernel(layer.weight, layer.P, layer.SIG, window, version)
    assert_close_rel(functional, expected, what="construct_kernel")
    # every element carries exactly its weight as mass inside the window
    window_dims = tuple(range(2, 2 + len(window)))
    assert_close_rel(expected.sum(window_dims), layer.weight.detach().sum(-1), what="reference mass")
    assert_close_rel(layer.kernel().sum(window_dims), layer.weight.detach().sum(-1), what="mass")


def test_reference_bilinear_single_element_by_hand():
    """Sanity of the reference itself: P = (-0.75, +1.5) in a 5x4 window is index (1.25, 3.5),
    i.e. rows 1/2 with 0.75/0.25 and columns 3/4 with 0.5/0.5 (column 4 lies outside)."""
    shares = paper_bilinear_footprint([-0.75 + 2, 1.5 + 2], (5, 4))
    assert shares == pytest.approx({(1, 3): 0.375, (2, 3): 0.125})
    # Our normalised bilinear keeps the whole mass inside, split only between the two rows.
    weight = torch.ones(1, 1, 1, dtype=torch.float64)
    P = torch.tensor([-0.75, 1.0], dtype=torch.float64).view(2, 1, 1, 1)
    kernel = construct_kernel(weight, P, None, (5, 4), "bilinear")[0, 0]
    expected = torch.zeros(5, 4, dtype=torch.float64)
    expected[1, 3], expected[2, 3] = 0.75, 0.25
    assert_close_rel(kernel, expected)


@pytest.mark.parametrize("version", ["triangle", "gauss"])
def test_reference_flat_axis_footprint_by_hand(version):
    """A (1, 5) window: the footprint along the flat axis is a single point, so the kernel is the
    1D footprint along the width; in particular it is not zero (the official v1/gauss bug)."""
    layer = make_layer((1, 5), version, in_channels=1, out_channels=1, groups=1, count=1)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.P.copy_(torch.tensor([0.0, 0.4], dtype=torch.float64).view(2, 1, 1, 1))
        layer.SIG.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64).view(2, 1, 1, 1))
    u = torch.arange(5, dtype=torch.float64)
    if version == "triangle":
        f = torch.clamp(1.2 - (u - 2.4).abs(), min=0)
    else:
        f = torch.exp(-0.5 * ((u - 2.4) / 0.47) ** 2)
    expected = (2.0 * f / f.sum()).view(1, 1, 1, 5)
    assert_close_rel(layer.kernel(), expected)


# ---------------------------------------------------------------------------------------------
# Subset of learned axes.
# ---------------------------------------------------------------------------------------------

LEARNED_AXES_CASES = [
    pytest.param(window, axes, version, id=f"{'x'.join(map(str, window))}-axes{''.join(map(str, axes))}-{version}")
    for window, axes in (
        ((9, 3, 3), (0,)),     # learnable delays along time, dense 3x3 spatial kernel
        ((3, 11), (1,)),       # learned along the width, dense height 3
        ((6, 3), (0,)),        # even learned axis
        ((5, 2, 4), (0, 2)),   # two learned axes around a dense one
        ((2, 3, 7), (2,)),     # learned last axis, non-cubic dense part
    )
    for version in VERSIONS
]


@pytest.mark.parametrize("window, learned_axes, version", LEARNED_AXES_CASES)
def test_learned_axes_kernel_and_forward_match_reference(window, learned_axes, version):
    layer = make_layer(window, version, learned_axes=learned_axes, padding=1)
    dense_window = tuple(s for a, s in enumerate(window) if a not in learned_axes)
    assert layer.weight.shape == (4, 1, *dense_window, 3)
    assert layer.P.shape == (len(learned_axes), 4, 1, *dense_window, 3)
    seed = sum(window) * 13 + sum(learned_axes) + VERSIONS.index(version)
    randomise(layer, seed)

    expected = reference_kernel(layer.weight, layer.P, layer.SIG, window, version, learned_axes)
    assert_close_rel(layer.kernel(), expected, what="kernel")

    # The forward pass convolves with that kernel (axis order included).
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, *(s + 3 for s in window), generator=generator, dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(window)]
    assert_close_rel(layer(x), conv(x, expected, layer.bias, padding=1, groups=2), what="forward")


def test_learned_axes_one_1d_kernel_per_dense_tap():
    """Dcls3d (9, 3, 3), positions along axis 0 only: kernel[o, i, :, h, w] is exactly the 1D DCLS
    kernel (Dcls1d with window 9) of the elements stored at dense tap (h, w)."""
    layer3d = make_layer((9, 3, 3), "gauss", in_channels=1, out_channels=2, groups=1, count=4, learned_axes=(0,))
    randomise(layer3d, 5)
    kernel3d = layer3d.kernel().detach()
    for h, w in itertools.product(range(3), range(3)):
        layer1d = make_layer((9,), "gauss", in_channels=1, out_channels=2, groups=1, count=4)
        with torch.no_grad():
            layer1d.weight.copy_(layer3d.weight[:, :, h, w, :])
            layer1d.P.copy_(layer3d.P[:, :, :, h, w, :])
            layer1d.SIG.copy_(layer3d.SIG[:, :, :, h, w, :])
        assert_close_rel(kernel3d[:, :, :, h, w], layer1d.kernel(), rtol=1e-12, what=f"tap {(h, w)}")


# ---------------------------------------------------------------------------------------------
# Integer positions on a regular grid = dilated convolution.
# ---------------------------------------------------------------------------------------------


def _grid_positions(taps: tuple[int, ...], dilation: tuple[int, ...], out_channels: int, in_per_group: int):
    """P ``(d, C_out, C_in/g, prod(taps))``: element ``k`` (row-major over the taps) at kernel
    index ``tap * dilation`` of the dilated window, i.e. centred position ``tap * d - window // 2``."""
    window = [(t - 1) * d + 1 for t, d in zip(taps, dilation)]
    offsets = []
    for tap in itertools.product(*(range(t) for t in taps)):
        offsets.append([i * d - w // 2 for i, d, w in zip(tap, dilation, window)])
    grid = torch.tensor(offsets, dtype=torch.float64).t()  # (d, K)
    return grid.view(len(taps), 1, 1, -1).expand(-1, out_channels, in_per_group, -1).clone()


DILATED_CASES = [
    pytest.param(taps, dilation, version, id=f"taps{'x'.join(map(str, taps))}-dil{'x'.join(map(str, dilation))}-{version}")
    for taps, dilation in (
        ((3, 3), (2, 2)),  # the 5x5 window of the brief
        ((3, 3), (1, 3)),  # non-square 3x7 window
        ((2, 3), (3, 2)),  # even 4x5 window ("same" padding, extra pixel after)
        ((3,), (3,)),
        ((4,), (2,)),
        ((2,), (3,)),      # even 1D window
    )
    for version in ("bilinear", "triangle")
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("taps, dilation, version", DILATED_CASES)
def test_integer_grid_positions_reproduce_dilated_conv(taps, dilation, version):
    dims = len(taps)
    window = tuple((t - 1) * d + 1 for t, d in zip(taps, dilation))
    in_channels, out_channels, groups = 4, 6, 2
    torch.manual_seed(sum(window) + len(version))
    # Odd windows: symmetric integer padding; even ones: "same" (both sides as nn.ConvNd).
    padding = tuple(w // 2 for w in window) if all(w % 2 for w in window) else "same"
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims](
        in_channels, out_channels, taps, dilation=dilation, padding=padding, groups=groups, dtype=torch.float64,
    )
    count = math.prod(taps)
    layer = LAYERS[dims](in_channels, out_channels, count, window, padding=padding,
                         groups=groups, version=version, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.reshape(out_channels, in_channels // groups, count))
        layer.P.copy_(_grid_positions(taps, dilation, out_channels, in_channels // groups))
        if layer.SIG is not None:
            layer.SIG.zero_()  # triangle of width 1: one-hot at integer positions
        layer.bias.copy_(conv.bias)
    x = torch.randn(2, in_channels, *(w + 5 for w in window), dtype=torch.float64)
    expected = conv(x)
    assert_close_rel(layer(x), expected, what="output")
    if padding == "same":
        assert expected.shape[2:] == x.shape[2:]


def test_integer_grid_gauss_footprints():
    """Gauss is not one-hot: at integer grid positions with the initial SIG = 0.23 (sigma 0.5),
    each element's footprint is the normalised exp(-2 d^2) around its grid point, per axis."""
    taps, dilation = (3, 3), (2, 2)
    window = (5, 5)
    layer = Dcls2d(1, 1, 9, window, version="gauss", dtype=torch.float64)
    weights = torch.arange(1.0, 10.0, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weights.view(1, 1, 9))
        layer.P.copy_(_grid_positions(taps, dilation, 1, 1))
    assert torch.all(layer.SIG == 0.23)
    u = torch.arange(5, dtype=torch.float64)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for k, (a, b) in enumerate(itertools.product(range(3), range(3))):
        row = torch.exp(-2.0 * (u - 2 * a) ** 2)
        col = torch.exp(-2.0 * (u - 2 * b) ** 2)
        expected += weights[k] * torch.outer(row / row.sum(), col / col.sum())
    kernel = layer.kernel()[0, 0]
    assert_close_rel(kernel, expected)
    # the grid points still carry most of the mass: exp(-2) ~ 0.135 to each neighbour
    for k, (a, b) in enumerate(itertools.product(range(3), range(3))):
        assert kernel[2 * a, 2 * b] > 0.5 * weights[k]


# ---------------------------------------------------------------------------------------------
# gradcheck of whole layers.
# ---------------------------------------------------------------------------------------------


def _kink_free_parameters(layer, seed: int) -> None:
    """Random parameters away from the kinks of |.| and relu: fractional part of the index
    position in [0.2, 0.8], |SIG| >= 0.1, and (triangle) the footprint's ends q +- width at
    least 0.05 away from grid points (each offending entry is redrawn)."""
    generator = torch.Generator().manual_seed(seed)
    learned_window = tuple(layer.dilated_kernel_size[a] for a in layer.learned_axes)

    def frac(t):
        return t - t.floor()

    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))
        P = random_positions(layer.P.shape[1:], learned_window, generator, on_bounds=False)
        bad = (frac(P) - 0.5).abs() > 0.3
        while bad.any():
            redraw = random_positions(layer.P.shape[1:], learned_window, generator, on_bounds=False)
            P = torch.where(bad, redraw, P)
            bad = (frac(P) - 0.5).abs() > 0.3
        layer.P.copy_(P)
        if layer.SIG is not None:
            SIG = random_sigmas(layer.SIG.shape, generator)
            if layer.interpolation.name == "triangle":
                def near_kink(sig):
                    width = sig.abs() + 1.0
                    return ((frac(P + width) - 0.5).abs() > 0.45) | ((frac(P - width) - 0.5).abs() > 0.45)
                bad = near_kink(SIG)
                while bad.any():
                    SIG = torch.where(bad, random_sigmas(layer.SIG.shape, generator), SIG)
                    bad = near_kink(SIG)
            layer.SIG.copy_(SIG)


GRADCHECK_CASES = [
    pytest.param(window, kwargs, version, id=f"{'x'.join(map(str, window))}{'-' + name if name else ''}-{version}")
    for window, kwargs, name in (
        ((5,), dict(in_channels=2, out_channels=2, groups=1, padding=2), ""),
        ((3, 4), dict(in_channels=2, out_channels=2, groups=2, padding=1, stride=(1, 2)), "depthwise"),
        ((3, 2, 4), dict(in_channels=1, out_channels=2, groups=1, padding=(1, 0, 1)), ""),
        ((4, 2, 3), dict(in_channels=1, out_channels=2, groups=1, learned_axes=(0,)), "learned0"),
    )
    for version in VERSIONS
]


@pytest.fixture
def single_thread():
    """Tiny float64 convolutions: intra-op threads only add overhead (about 20 ms per conv3d
    call with two threads on a 2-core CI machine, against 20 us with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("window, kwargs, version", GRADCHECK_CASES)
def test_gradcheck_full_layer(window, kwargs, version, single_thread):
    layer = LAYERS[len(window)](kernel_count=2, dilated_kernel_size=window, version=version,
                                dtype=torch.float64, **kwargs)
    _kink_free_parameters(layer, seed=sum(window) + VERSIONS.index(version))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, layer.in_channels, *(s + 1 for s in window), generator=generator, dtype=torch.float64)

    names = [n for n in ("weight", "P", "SIG", "bias") if getattr(layer, n) is not None]
    params = [getattr(layer, n).detach().clone().requires_grad_(True) for n in names]

    def forward(inp, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (inp,))

    assert torch.autograd.gradcheck(forward, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# fp32 kernels: tails below fp32 resolution are exact zeros (no subnormals, a support to crop).
# ---------------------------------------------------------------------------------------------

FP32 = torch.finfo(torch.float32)


def _subnormal_count(tensor: torch.Tensor) -> int:
    return int(((tensor != 0) & (tensor.abs() < FP32.tiny)).sum())


def _spread_fp32_layer(version: str, window: int = 23, channels: int = 16, count: int = 26) -> Dcls2d:
    """A depthwise fp32 layer with positions all over the window and the narrowest widths the
    paper's Gaussian starts from: the case whose tails reach furthest below fp32's range."""
    layer = Dcls2d(channels, channels, count, window, padding=window // 2, groups=channels, version=version)
    generator = torch.Generator().manual_seed(3)
    low, high = bounds(window)
    with torch.no_grad():
        layer.P.copy_(torch.rand(layer.P.shape, generator=generator) * (high - low) + low)
        if layer.SIG is not None:
            layer.SIG.uniform_(0.0, 0.3, generator=generator)
    return layer


@pytest.mark.parametrize("version", VERSIONS)
def test_fp32_kernels_and_gradients_hold_no_subnormal_floats(version):
    layer = _spread_fp32_layer(version)
    x = torch.randn(2, layer.in_channels, 30, 30, generator=torch.Generator().manual_seed(4), requires_grad=True)
    output = layer(x)
    output.square().sum().backward()
    tensors = {"kernel": layer.kernel().detach(), "output": output.detach(), "x.grad": x.grad}
    tensors.update({f"footprints[{i}]": f.detach() for i, f in enumerate(layer.footprints().dense())})
    tensors.update({f"{n}.grad": p.grad for n, p in layer.named_parameters()})
    assert {name: _subnormal_count(t) for name, t in tensors.items()} == dict.fromkeys(tensors, 0)


@pytest.mark.parametrize("version", ["gauss", "triangle"])
def test_dropped_tails_are_below_fp32_resolution_of_the_paper_kernel(version):
    layer = _spread_fp32_layer(version, window=15, channels=4, count=8)
    expected = reference_kernel(layer.weight.double(), layer.P.double(), layer.SIG.double(), (15, 15), version)
    actual = layer.kernel().double()
    # What is dropped per element is under half an ulp of its own peak: at most count / 2 ulps
    # of the kernel's largest entry in all, next to fp32's own rounding of the sums.
    tolerance = layer.kernel_count * FP32.eps * expected.abs().amax().item()
    assert (actual - expected).abs().max().item() <= tolerance
    if version == "gauss":  # the untruncated tails are real: they were there to drop
        assert int((expected == 0).sum()) == 0 and int((actual == 0).sum()) > 0


def _reach(version: str, width: torch.Tensor) -> torch.Tensor:
    """How far from its centre ``q`` an element's footprint can stay at or above ``2^-24`` of
    its peak, which lies on the grid point nearest ``q`` (at most 1/2 away): for the Gaussian
    ``(d^2 - 1/4) / (2 w^2) <= 24 ln 2``, for the triangle ``d < w``."""
    if version == "gauss":
        return (0.25 + 48 * math.log(2) * width.square()).sqrt()
    return width


@pytest.mark.parametrize("version", ["gauss", "triangle"])
def test_fresh_profile_layers_convolve_only_the_taps_their_elements_reach(version):
    window = 23
    layer = Dcls2d(8, 8, 26, window, padding=window // 2, groups=8, version=version)  # as initialised
    kernel, padding = layer._kernel_and_padding()
    centres = layer.P.detach() + window // 2
    reach = _reach(version, layer.SIG.detach().abs() + (0.27 if version == "gauss" else 1.0))
    for axis in range(2):
        first = max(0, math.floor((centres[axis] - reach[axis]).min().item()))
        last = min(window - 1, math.ceil((centres[axis] + reach[axis]).max().item()))
        assert kernel.shape[2 + axis] <= last - first + 1 < window
    x = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    expected = F.conv2d(x, layer.kernel().detach(), layer.bias.detach(), 1, window // 2, 1, 8)
    torch.testing.assert_close(layer(x).detach(), expected, rtol=1e-5, atol=1e-6)


def test_a_gaussian_element_far_outside_the_window_contributes_nothing():
    # Only unclamped positions get there. Its tail in the window is far below the 1e-7 the
    # normaliser adds (as in the official code), so it adds no mass: not a uniform smear.
    layer = Dcls1d(1, 1, 2, 9, version="gauss", bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.P.copy_(torch.tensor([[[0.3, 40.0]]]))
        layer.SIG.zero_()
    kernel = layer.kernel().detach()
    single = Dcls1d(1, 1, 1, 9, version="gauss", bias=False)
    with torch.no_grad():
        single.weight.fill_(1.0)
        single.P.fill_(0.3)
        single.SIG.zero_()
    torch.testing.assert_close(kernel, single.kernel().detach(), rtol=0, atol=0)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
