"""Bad tensors given to the functional op are named: ``dcls_conv`` and ``dcls_kernel`` refuse
``weight``, ``P``, ``SIG`` and ``bias`` that do not fit each other with a ``ValueError`` giving
the argument, its shape and the one expected (not a broadcast error from inside construction,
nor a silently wrong kernel); a ``SIG`` the version has no use for, or lacks, likewise; and an
integer input gets advice that works. Shapes that broadcast as documented (positions shared by
channels) still work, and give what the expanded positions give."""

from __future__ import annotations

import warnings

import pytest
import torch

from dcls_zoo import Dcls2d, dcls_conv, dcls_kernel, functional

# depthwise 2D: 8 channels, 6 elements per kernel, a 5x5 window; P (2, 8, 1, 6)
WEIGHT = (8, 1, 6)
EXPECTED_P = "expected (2, C_out=8 or 1, C_in/groups=1 or 1, K=6) for weight (8, 1, 6) and 2 learned axes"


def _conv(*, weight=WEIGHT, P=(2, 8, 1, 6), SIG="P", bias=None, window=5, version="gauss", learned_axes=None,
          input=(2, 8, 12, 12), op="conv"):
    """One call with tensors of the given shapes (``SIG="P"``: SIG shaped like P)."""
    torch.manual_seed(0)
    SIG = torch.zeros(P) if SIG == "P" else None if SIG is None else torch.zeros(SIG)
    tensors = dict(weight=torch.randn(weight), P=torch.zeros(P).uniform_(-1, 1), SIG=SIG)
    if op == "kernel":
        return dcls_kernel(**tensors, dilated_kernel_size=window, version=version, learned_axes=learned_axes)
    return dcls_conv(torch.randn(input), **tensors, dilated_kernel_size=window, bias=None if bias is None
                     else torch.zeros(bias), padding="same", groups=8, version=version, learned_axes=learned_axes)


def _refused(fragments: list[str], **call) -> None:
    with pytest.raises(ValueError) as info:
        _conv(**call)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize("call", [
    dict(P=(3, 8, 1, 6)),  # a window given as an int: the input's 2 spatial axes decide
    dict(P=(1, 8, 1, 6)),
    dict(P=(3, 8, 1, 6), window=(5, 5)),
    dict(P=(3, 8, 1, 6), window=(5, 5), op="kernel"),
], ids=["3-axes", "1-axis", "3-axes-window-listed", "kernel"])
def test_P_with_the_wrong_number_of_learned_axes_is_named(call):
    _refused([f"P has shape {call['P']}", EXPECTED_P], **call)


def test_P_counting_the_learned_axes_not_the_spatial_ones_is_named():
    _refused(["P has shape (2, 8, 1, 3, 6)", "expected (1, C_out=8 or 1, C_in/groups=1 or 1, 3 or 1, K=6)",
              "weight (8, 1, 3, 6) and 1 learned axis (learned_axes=(1,))"],
             weight=(8, 1, 3, 6), P=(2, 8, 1, 3, 6), window=(3, 5), learned_axes=(1,))


@pytest.mark.parametrize("P", [(2, 8, 1, 5), (2, 8, 1, 1), (2, 8, 1, 7)])
@pytest.mark.parametrize("op", ["conv", "kernel"])
def test_P_with_another_element_count_is_named(P, op):
    _refused([f"P has shape {P}", EXPECTED_P], P=P, op=op)


@pytest.mark.parametrize("P", [(2, 4, 1, 6), (2, 3, 1, 6), (2, 8, 2, 6), (2, 16, 1, 6)])
def test_P_with_channel_dims_neither_equal_nor_one_is_named(P):
    _refused([f"P has shape {P}", EXPECTED_P], P=P)


@pytest.mark.parametrize("SIG", [(2, 1, 1, 6), (2, 8, 1, 5), (1, 8, 1, 6), (2, 8, 6)])
@pytest.mark.parametrize("op", ["conv", "kernel"])
def test_SIG_not_shaped_like_P_is_named(SIG, op):
    _refused([f"SIG has shape {SIG}", "expected P's shape (2, 8, 1, 6)"], SIG=SIG, op=op)


@pytest.mark.parametrize("call,fragments", [
    # a dense axis of 4 taps where the window has 3: the convolution came out one row too tall
    (dict(weight=(8, 1, 4, 6), P=(1, 8, 1, 4, 6)),
     ["weight has shape (8, 1, 4, 6)", "expected (C_out, C_in/groups, 3 (axis 0), K)", "dilated_kernel_size=(3, 5)"]),
    (dict(weight=(8, 1, 3, 6), P=(1, 8, 1, 2, 6)),
     ["P has shape (1, 8, 1, 2, 6)", "expected (1, C_out=8 or 1, C_in/groups=1 or 1, 3 or 1, K=6)"]),
    # P without its dense dim broadcast from the right, positions landing on the wrong axes
    (dict(weight=(8, 1, 3, 6), P=(1, 8, 1, 6)),
     ["P has shape (1, 8, 1, 6)", "expected (1, C_out=8 or 1, C_in/groups=1 or 1, 3 or 1, K=6)"]),
], ids=["weight-dense-size", "P-dense-size", "P-without-dense-dim"])
def test_wrong_dense_dims_are_named(call, fragments):
    _refused(fragments + ["1 learned axis (learned_axes=(1,))"], window=(3, 5), learned_axes=(1,), **call)


@pytest.mark.parametrize("call,fragments", [
    (dict(weight=(8, 1, 3, 6)),
     ["weight has shape (8, 1, 3, 6)", "expected (C_out, C_in/groups, K) for a 2D convolution", "2 learned axes"]),
    (dict(weight=(8, 6), P=(2, 8, 6)),
     ["weight has shape (8, 6)", "expected (C_out, C_in/groups, K) for a 2D convolution"]),
    (dict(weight=(8, 1, 3, 6), P=(2, 8, 1, 3, 6), window=(5, 5)),
     ["weight has shape (8, 1, 3, 6)", "expected (C_out, C_in/groups, K) for a 2D convolution"]),
    (dict(weight=(8, 1, 6), P=(1, 8, 1, 6), window=(3, 5), learned_axes=(1,)),
     ["weight has shape (8, 1, 6)", "expected (C_out, C_in/groups, 3 (axis 0), K)", "learned_axes=(1,)"]),
], ids=["dense-dim-too-many", "no-C_in-dim", "dense-dim-window-listed", "dense-dim-missing"])
def test_weight_with_the_wrong_dims_for_the_spatial_axes_is_named(call, fragments):
    _refused(fragments, **call)


@pytest.mark.parametrize("bias", [(4,), (8, 1), (1,), ()])
def test_bias_of_the_wrong_length_is_named(bias):
    _refused([f"bias has shape {bias}", "expected (C_out=8,) for weight (8, 1, 6)"], bias=bias)


@pytest.mark.parametrize("call,fragments", [
    (dict(version="bilinear"), ["SIG has shape (2, 8, 1, 6)", "version 'bilinear' has no widths", "SIG=None"]),
    (dict(version="v1"), ["SIG has shape (2, 8, 1, 6)", "version 'bilinear' has no widths", "SIG=None"]),
    (dict(version="bilinear", op="kernel"), ["SIG has shape (2, 8, 1, 6)", "version 'bilinear' has no widths"]),
    (dict(version="gauss", SIG=None), ["SIG is None", "version 'gauss' learns widths", "shaped like P (2, 8, 1, 6)"]),
    (dict(version="triangle", SIG=None), ["SIG is None", "version 'triangle' learns widths"]),
    (dict(version="gauss", SIG=None, op="kernel"), ["SIG is None", "version 'gauss' learns widths"]),
], ids=["bilinear", "v1", "bilinear-kernel", "gauss", "triangle", "gauss-kernel"])
def test_SIG_given_without_use_or_missing_is_refused_naming_the_version(call, fragments):
    _refused(fragments, **call)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
@pytest.mark.parametrize("how", ["op", "layer", "autocast"])
def test_integer_input_gets_advice_that_works(dtype, how):
    torch.manual_seed(0)
    layer = Dcls2d(3, 4, 3, 5, padding=2)
    images = torch.randint(0, 255, (1, 3, 8, 8)).to(dtype)
    with pytest.raises(TypeError) as info:
        if how == "layer":
            layer(images)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
                # under autocast it used to be cast to bf16 as it was, unnormalised
                dcls_conv(images, layer.weight, layer.P, layer.SIG, 5, layer.bias, padding=2)
    message = str(info.value)
    assert message.startswith(f"input has dtype {dtype}"), message
    assert "input.float()" in message and "normalise" in message and "\n" not in message
    assert "layer.to(" not in message  # the old advice: casting the layer to the images' dtype
    layer(images.float() / 255)  # the advice works


@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
@pytest.mark.parametrize("shared", [(2, 1, 1, 6), (2, 8, 1, 6), (2, 1, 1, 1, 6)], ids=["C_out", "none", "dense"])
def test_shared_positions_broadcast_as_expanded_ones(version, shared):
    """Not a refusal: the checks must let every documented broadcast through, unchanged (in
    float64, so that summation order cannot blur the gradients' comparison)."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    try:
        _compare_shared_with_expanded(version, shared)
    finally:
        torch.set_default_dtype(torch.float32)


def _compare_shared_with_expanded(version, shared):
    dense = len(shared) == 5
    window, axes = ((3, 5), (1,)) if dense else (5, None)
    weight = torch.randn(8, 1, *(3,) * dense, 6)
    shape = (1 if dense else 2, *shared[1:])
    P = torch.empty(shape).uniform_(-2, 2).requires_grad_()
    SIG = torch.empty(shape).uniform_(0, 0.5).requires_grad_() if version != "bilinear" else None
    full = (shape[0], *weight.shape)
    P_full = P.detach().expand(full).clone().requires_grad_()
    SIG_full = None if SIG is None else SIG.detach().expand(full).clone().requires_grad_()
    x = torch.randn(2, 8, 9, 9)
    args = dict(padding="same", groups=8, version=version, learned_axes=axes)
    y = dcls_conv(x, weight, P, SIG, window, **args)
    y_full = dcls_conv(x, weight, P_full, SIG_full, window, **args)
    torch.testing.assert_close(y, y_full)
    torch.testing.assert_close(dcls_kernel(weight, P, SIG, window, version, axes),
                               dcls_kernel(weight, P_full, SIG_full, window, version, axes))
    y.square().sum().backward()
    y_full.square().sum().backward()
    torch.testing.assert_close(P.grad, P_full.grad.sum_to_size(P.shape))
    if SIG is not None:
        torch.testing.assert_close(SIG.grad, SIG_full.grad.sum_to_size(SIG.shape))


def test_the_shape_checks_are_memoised_on_metadata():
    """A layer's forward pays one look-up: the same shapes are checked once, and never read values."""
    layer = Dcls2d(4, 8, 3, 7, padding=3, groups=2)
    x = torch.randn(2, 4, 10, 10)
    layer(x)
    before = functional._memoised_shapes.cache_info()
    for _ in range(3):
        layer(x)
    after = functional._memoised_shapes.cache_info()
    assert after.hits - before.hits == 3 and after.misses == before.misses
    with torch.device("meta"):  # no values at all: the checks still run
        meta = Dcls2d(4, 8, 3, 7, padding=3, groups=2)
        with pytest.raises(ValueError, match=r"^bias has shape \(7,\)"):
            dcls_conv(torch.empty(2, 4, 10, 10), meta.weight, meta.P, meta.SIG, 7, torch.empty(7), groups=2)


def test_compiled_call_traces_in_one_graph_and_names_the_bad_argument():
    torch.manual_seed(0)
    layer = Dcls2d(4, 8, 3, 7, padding=3, groups=2)
    x = torch.randn(2, 4, 10, 10)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on the memoised checks' lru_cache
        explained = torch._dynamo.explain(layer)(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

        def bad(x):
            return dcls_conv(x, layer.weight, layer.P[..., :2], layer.SIG[..., :2], 7, padding=3, groups=2)

        torch._dynamo.reset()
        with pytest.raises(ValueError, match=r"^P has shape \(2, 8, 2, 2\): expected \(2, C_out=8 or 1, "):
            torch.compile(bad, backend="eager")(x)
    torch._dynamo.reset()
