"""Layer behaviour that no reference implementation covers: nn.ConvNd compatibility, padding,
argument and input checks, clamping, the shared-position functional API, and silence."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch import nn

from dcls_zoo import Dcls1d, Dcls2d, Dcls3d
from dcls_zoo.construct import axis_footprints, construct_kernel, kernel_from_footprints

LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _conv_with_kernel(layer, **conv_kwargs) -> nn.Module:
    """A plain nn.ConvNd holding ``layer``'s dense kernel (the reference for padding/stride)."""
    dims = layer.spatial_dims
    conv = CONVS[dims](
        layer.in_channels,
        layer.out_channels,
        layer.dilated_kernel_size,
        groups=layer.groups,
        bias=layer.bias is not None,
        dtype=layer.weight.dtype,
        **conv_kwargs,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.kernel())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
@pytest.mark.parametrize(
    "padding,padding_mode,stride",
    [(0, "zeros", 1), (2, "zeros", 2), ("same", "zeros", 1), ("valid", "zeros", 1),
     ("same", "reflect", 1), (1, "circular", 1), (3, "replicate", 2)],
)
def test_matches_plain_conv_with_same_kernel(dims, version, padding, padding_mode, stride):
    torch.manual_seed(dims)
    window = {1: 7, 2: (5, 4), 3: (3, 4, 3)}[dims]  # even sizes exercise asymmetric 'same'
    layer = LAYERS[dims](4, 6, 3, window, stride=stride, padding=padding, groups=2,
                         padding_mode=padding_mode, version=version).double()
    conv = _conv_with_kernel(layer, stride=stride, padding=padding, padding_mode=padding_mode)
    x = torch.randn(2, 4, *[9] * dims, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_same_padding_keeps_spatial_size(dims):
    layer = LAYERS[dims](3, 5, 4, 6, padding="same")
    x = torch.randn(2, 3, *[8] * dims)
    assert layer(x).shape == (2, 5, *[8] * dims)


def test_unbatched_input_matches_batched():
    layer = Dcls2d(3, 4, 5, 7, padding=3)
    x = torch.randn(3, 10, 11)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("version,sig_init", [("bilinear", None), ("v1", None), ("max", 0.0), ("gauss", 0.23)])
def test_parameter_shapes_and_init(version, sig_init):
    torch.manual_seed(0)
    layer = Dcls2d(8, 16, 5, (9, 7), groups=4, version=version)
    assert layer.weight.shape == (16, 2, 5)
    assert layer.P.shape == (2, 16, 2, 5)
    assert layer.bias.shape == (16,)
    if sig_init is None:
        assert layer.SIG is None
    else:
        assert layer.SIG.shape == layer.P.shape
        assert torch.all(layer.SIG == sig_init)
    assert layer.P[0].abs().max() <= 4 and layer.P[1].abs().max() <= 3
    assert 0.3 < layer.P.std() < 0.6  # N(0, 0.5) clamped far from its tails


def test_clamp_positions_keeps_every_element_inside_even_and_odd_windows():
    layer = Dcls2d(2, 2, 50, (4, 7), version="bilinear")
    with torch.no_grad():
        layer.P.mul_(100)
    layer.clamp_positions_()
    # index = P + s // 2 must lie in [0, s - 1] on every axis
    rows, cols = layer.P[0] + 2, layer.P[1] + 3
    assert rows.min() == 0 and rows.max() == 3
    assert cols.min() == 0 and cols.max() == 6
    # an element at the last index keeps its full mass inside the window
    kernel = layer.kernel()
    torch.testing.assert_close(kernel.sum((-1, -2)), layer.weight.sum(-1))


def test_footprints_have_unit_mass_inside_window():
    positions = torch.tensor([[[-2.5, 0.3, 2.9]], [[1.2, -0.7, 0.0]]], dtype=torch.float64)
    sigmas = torch.full_like(positions, 0.6)
    for version in ("bilinear", "triangle", "gauss"):
        for factor in axis_footprints(positions, sigmas, (7, 5), version).dense():
            torch.testing.assert_close(factor.sum(-1), torch.ones(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("version", ["bilinear", "gauss"])
@pytest.mark.parametrize("window", [(9, 9), (9, 5, 4)])
def test_shared_positions_broadcast_over_layers(version, window):
    """Footprints built once from positions shared by a stage serve every block's weights."""
    torch.manual_seed(0)
    channels, count, dims = 6, 4, len(window)
    shared_p = torch.randn(dims, channels, 1, count)
    shared_sig = torch.rand(dims, channels, 1, count)
    footprints = axis_footprints(shared_p, shared_sig, window, version)
    for _ in range(3):
        weight = torch.randn(channels, 1, count)
        expected = construct_kernel(weight, shared_p, shared_sig, window, version)
        torch.testing.assert_close(kernel_from_footprints(weight, footprints), expected)
    # positions with a broadcast (size-1) channel dimension
    weight = torch.randn(channels, 1, count)
    one_p, one_sig = shared_p[:, :1], shared_sig[:, :1]
    expected = construct_kernel(weight, one_p.expand_as(shared_p), one_sig.expand_as(shared_sig), window, version)
    torch.testing.assert_close(construct_kernel(weight, one_p, one_sig, window, version), expected)


def test_bilinear_taps_agree_with_dense_combination():
    """The corner-scatter and the separable-matmul combinations build the same kernel."""
    from dcls_zoo.construct import DenseFootprints

    torch.manual_seed(1)
    for window in [(7,), (9, 4), (1, 7), (5, 3, 6)]:
        positions = torch.randn(len(window), 5, 2, 6, dtype=torch.float64) * 3
        weight = torch.randn(5, 2, 6, dtype=torch.float64)
        taps = axis_footprints(positions, None, window, "bilinear")
        torch.testing.assert_close(taps.kernel(weight), DenseFootprints(taps.dense()).kernel(weight))


def test_bilinear_position_gradient_at_window_edges_points_inward():
    """An element clamped onto the window's edge (an integer position) can still move back in."""
    positions = torch.tensor([[-3.0, 3.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.ones(2, dtype=torch.float64)
    kernel = construct_kernel(weight, positions, None, (7,), "bilinear")
    # reward mass one step inside each edge: the gradient must move both elements inwards
    (-(kernel[1] + kernel[5])).backward()
    assert positions.grad[0, 0] < 0 and positions.grad[0, 1] > 0


def test_learned_axes_parameter_shapes_and_kernel_layout():
    layer = Dcls3d(2, 4, 3, (11, 3, 5), learned_axes=(0,), version="bilinear")
    assert layer.weight.shape == (4, 2, 3, 5, 3)
    assert layer.P.shape == (1, 4, 2, 3, 5, 3)
    assert layer.kernel().shape == (4, 2, 11, 3, 5)
    # position mass sits only along the learned axis: every dense tap sums to its weights
    torch.testing.assert_close(layer.kernel().sum(2), layer.weight.sum(-1))


def test_gradients_reach_every_parameter():
    layer = Dcls2d(3, 3, 4, 7, padding="same", groups=3, version="gauss")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    layer(x).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_no_warnings_or_log_records_per_layer(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG):
            layers = [Dcls2d(4, 4, 3, 5, groups=4, padding=2) for _ in range(5)]
            for layer in layers:
                layer(torch.randn(1, 4, 6, 6))
    assert caplog.records == []


def test_extra_repr_shows_configuration():
    text = repr(Dcls2d(4, 8, 5, (9, 7), stride=2, padding="same" if False else 3, groups=2,
                       bias=False, padding_mode="reflect", version="max"))
    for fragment in ("4, 8", "kernel_count=5", "dilated_kernel_size=(9, 7)", "version='triangle'",
                     "stride=(2, 2)", "padding=(3, 3)", "groups=2", "bias=False", "padding_mode='reflect'"):
        assert fragment in text, (fragment, text)
    assert "learned_axes=(1,)" in repr(Dcls2d(1, 1, 2, (3, 9), learned_axes=[1]))


@pytest.mark.parametrize(
    "kwargs,error,fragment",
    [
        (dict(kernel_count=0), ValueError, "kernel_count must be >= 1, got 0"),
        (dict(kernel_count=2.5), TypeError, "kernel_count must be an int"),
        (dict(dilated_kernel_size=0), ValueError, "dilated_kernel_size must be >= 1, got 0"),
        (dict(dilated_kernel_size=(5, 5, 5)), ValueError, "dilated_kernel_size must have 2 entries"),
        (dict(dilated_kernel_size=(5, -1)), ValueError, "dilated_kernel_size must be >= 1, got -1"),
        (dict(in_channels=6, groups=4), ValueError, "in_channels=6 is not divisible by groups=4"),
        (dict(out_channels=6, groups=4), ValueError, "out_channels=6 is not divisible by groups=4"),
        (dict(version="cubic"), ValueError, "unknown version 'cubic'"),
        (dict(padding_mode="mirror"), ValueError, "padding_mode must be one of"),
        (dict(padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
        (dict(padding="full"), ValueError, "got 'full'"),
        (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
        (dict(stride=0), ValueError, "stride must be >= 1, got 0"),
        (dict(learned_axes=(2,)), ValueError, "learned_axes must be distinct kernel axes in [0, 2)"),
        (dict(learned_axes=(0, 0)), ValueError, "learned_axes"),
        (dict(learned_axes=1), TypeError, "learned_axes must be a sequence"),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs, error, fragment):
    arguments = dict(in_channels=4, out_channels=8, kernel_count=3, dilated_kernel_size=5)
    arguments.update(kwargs)
    with pytest.raises(error) as info:
        Dcls2d(**arguments)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "make_input,error,fragment",
    [
        (lambda: torch.randn(4, 8), ValueError, "expects a 4D (batched) or 3D (unbatched) input, got shape (4, 8)"),
        (lambda: torch.randn(2, 5, 8, 8), ValueError, "in_channels=4, got input with 5 channels"),
        (lambda: torch.randn(2, 4, 8, 8, dtype=torch.float64), TypeError, "dtype torch.float64 does not match"),
        (lambda: torch.randn(2, 4, 8, 8, device="meta"), ValueError, "input is on meta"),
        (lambda: [1.0, 2.0], TypeError, "expects a Tensor input, got list"),
    ],
)
def test_bad_input_is_reported(make_input, error, fragment):
    layer = Dcls2d(4, 4, 3, 5)
    with pytest.raises(error) as info:
        layer(make_input())
    assert fragment in str(info.value)


def _reference_outputs_and_grads(layer, x, stride, padding, padding_mode):
    """Output and gradients through the whole dense window: ``layer.kernel()`` and ``F.convNd``."""
    conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}[layer.spatial_dims]
    x = x.detach().requires_grad_()
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = nn.functional.pad(x, [padding] * (2 * layer.spatial_dims), mode=mode)
    y = conv(padded, layer.kernel(), layer.bias, stride, 0, 1, layer.groups)
    return y, torch.autograd.grad(y, [x, *layer.parameters()], torch.linspace(-1, 1, y.numel()).view_as(y).double())


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
@pytest.mark.parametrize("stride,padding,padding_mode", [(1, 6, "zeros"), (2, 5, "reflect")])
def test_skipping_unreached_taps_is_exact(dims, version, stride, padding, padding_mode):
    """On the CPU a layer drops the border taps its elements never reach; output and every
    gradient must equal the whole-window computation (float64)."""
    torch.manual_seed(dims)
    window = {1: 13, 2: (13, 11), 3: (13, 11, 9)}[dims]
    layer = LAYERS[dims](4, 4, 5, window, stride=stride, padding=padding, groups=4,
                         padding_mode=padding_mode, version=version).double()
    if version == "bilinear":
        with torch.no_grad():  # an integer position: its upper tap has value 0 but a gradient
            layer.P[:, 0, 0, 0] = 2.0
    x = torch.randn(2, 4, *[12] * dims, dtype=torch.float64)
    kernel, _ = layer._kernel_and_padding()
    if version != "gauss":  # fresh gauss elements reach almost the whole window
        assert math.prod(kernel.shape[2:]) < math.prod(layer.dilated_kernel_size)
    expected, expected_grads = _reference_outputs_and_grads(layer, x, stride, padding, padding_mode)
    x = x.detach().requires_grad_()
    y = layer(x)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], torch.linspace(-1, 1, y.numel()).view_as(y).double())
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for got, want, name in zip(grads, expected_grads, ["input", *dict(layer.named_parameters())]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_fresh_17x17_layer_convolves_only_the_reached_centre():
    torch.manual_seed(0)
    layer = Dcls2d(96, 96, 34, 17, padding="same", groups=96, version="bilinear")
    kernel, padding = layer._kernel_and_padding()
    reach = (layer.P.detach() + 8).floor()  # lower tap index of every element, per axis
    for axis in range(2):
        first, last = int(reach[axis].min()), int(reach[axis].max()) + 1
        assert kernel.shape[2 + axis] == last - first + 1 < 10
        assert padding[axis] == (8 - first, 8 - (16 - last))
    torch.testing.assert_close(kernel, layer.kernel()[:, :, slice(*_span(reach[0])), slice(*_span(reach[1]))])


def _span(lower_taps: torch.Tensor) -> tuple[int, int]:
    return int(lower_taps.min()), int(lower_taps.max()) + 2
