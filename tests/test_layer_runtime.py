"""DCLS layers in the runtime situations nn.ConvNd handles: mixed precision, exact kernel caching,
inference mode, empty batches, double backward, non-finite positions, argument parity."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dcls_zoo
from dcls_zoo import Dcls1d, Dcls2d, Dcls3d, dcls_conv, fuse

LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _reference(layer: dcls_zoo.DclsConvNd, x: torch.Tensor) -> torch.Tensor:
    """The layer's output computed independently: its dense kernel through F.pad + F.convNd."""
    dims = layer.spatial_dims
    flat = [amount for pair in reversed(layer._padding_pairs) for amount in pair]
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return CONV[dims](F.pad(x, flat, mode=mode), layer.kernel(), layer.bias, layer.stride, 0, 1, layer.groups)


# ----------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
def test_bf16_autocast_convolves_in_bf16_with_an_fp32_kernel(dims, version):
    torch.manual_seed(dims)
    layer = LAYERS[dims](6, 6, 4, 7, padding="same", groups=6 if dims == 2 else 2, version=version)
    x = torch.randn(2, 6, *[9] * dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    # as nn.ConvNd under autocast: the bf16 convolution of the bf16-rounded fp32 kernel
    with torch.no_grad():
        kernel = layer.kernel()
    assert kernel.dtype == torch.float32
    flat = [amount for pair in reversed(layer._padding_pairs) for amount in pair]
    expected = CONV[dims](F.pad(x.bfloat16(), flat), kernel.bfloat16(), layer.bias.bfloat16(), 1, 0, 1, layer.groups)
    torch.testing.assert_close(y.float(), expected.float(), rtol=2e-2, atol=2e-2)
    y.float().square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.dtype == torch.float32 and parameter.grad is not None, name
        assert parameter.grad.dtype == torch.float32 and torch.isfinite(parameter.grad).all(), name


def test_bf16_autocast_position_gradients_follow_fp32():
    """Positions get their gradient through an fp32 kernel: close to the fp32 gradient."""
    torch.manual_seed(0)
    layer = Dcls2d(8, 8, 6, 11, padding="same", groups=8, version="bilinear")
    x = torch.randn(4, 8, 16, 16)
    target = torch.randn(4, 8, 16, 16)
    (reference_grad,) = torch.autograd.grad(F.mse_loss(layer(x), target), [layer.P])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.mse_loss(layer(x).float(), target)
    (grad,) = torch.autograd.grad(loss, [layer.P])
    cosine = F.cosine_similarity(grad.flatten(), reference_grad.flatten(), dim=0)
    assert grad.dtype == torch.float32 and cosine > 0.99


@pytest.mark.parametrize("arch", ["convnext_dcls_atto", "resnet50_dcls"])
def test_bf16_autocast_trains_a_whole_model(arch):
    torch.manual_seed(0)
    model = dcls_zoo.create_model(arch, num_classes=4)
    if arch == "resnet50_dcls":  # keep it quick: the first stage only matters for the mechanism
        model.layer3, model.layer4 = nn.Identity(), nn.Identity()
        model.fc = nn.Linear(512, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    positions = dcls_zoo.position_parameters(model)
    assert positions and all(p.dtype == torch.float32 for p in positions)
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.endswith(".P") for name in moved)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_dispatch(dtype):
    torch.manual_seed(0)
    layer = Dcls2d(16, 16, 8, 17, padding="same", groups=16, version="bilinear").cuda()
    x = torch.randn(2, 16, 20, 20, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), _reference(layer, x), rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert layer.P.grad.dtype == torch.float32 and torch.isfinite(layer.P.grad).all()


# ----------------------------------------------------------------------------- the eval kernel cache


def _fresh(layer_or_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(layer_or_model)(x)  # copies start with an empty cache


@pytest.mark.parametrize("edit", ["weight_data_mul", "P_data_copy", "P_data_index_add", "SIG_data_fill"])
def test_cache_sees_edits_through_data(edit):
    torch.manual_seed(0)
    layer = Dcls2d(3, 3, 4, 9, padding="same", groups=3, version="gauss").eval()
    other = Dcls2d(3, 3, 4, 9, padding="same", groups=3, version="gauss")
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        before = layer(x)
        if edit == "weight_data_mul":
            layer.weight.data.mul_(2)
        elif edit == "P_data_copy":
            layer.P.data.copy_(other.P)
        elif edit == "P_data_index_add":
            layer.P.data[0] += 1
        else:
            layer.SIG.data.fill_(1.5)
        after = layer(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _fresh(layer, x))
    torch.testing.assert_close(after, _reference(layer, x).detach(), rtol=1e-5, atol=1e-5)


def test_model_weights_copied_through_data_are_used():
    """The reported case: another model's weights copied in with .data.copy_ under no_grad."""
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=5, ls_init_value=1.0).eval()
    torch.manual_seed(1)
    source = dcls_zoo.create_model("convnext_dcls_atto", num_classes=5, ls_init_value=1.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)  # fills the caches
        for mine, theirs in zip(model.parameters(), source.parameters()):
            mine.data.copy_(theirs.data)
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_unchanged_parameters_reuse_the_kernel():
    layer = Dcls2d(4, 4, 5, 9, padding="same", groups=4).eval()
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        for _ in range(3):
            layer(x)
    with torch.inference_mode():
        layer(x)
    assert layer._kernel_cache.builds == 1


def test_input_gradients_after_an_inference_mode_forward():
    """A frozen eval model used once under inference_mode still gives input gradients later."""
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3).eval().requires_grad_(False)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model(x)
    x = x.clone().requires_grad_()
    model(x).sum().backward()
    plain = fuse(model)
    x_plain = x.detach().clone().requires_grad_()
    plain(x_plain).sum().backward()
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-4, atol=1e-6)


def test_kernel_cache_is_not_filled_by_torch_export():
    layer = Dcls2d(4, 4, 5, 9, padding="same", groups=4, version="bilinear").eval()
    x = torch.randn(1, 4, 12, 12)
    program = torch.export.export(layer, (x,))
    assert layer._kernel_cache.builds == 0
    with torch.no_grad():
        layer.P.mul_(-1)  # the exported graph builds the kernel from its (lifted) parameters
        torch.testing.assert_close(program.module()(x), layer(x))


# ----------------------------------------------------------------------------- autograd corners


@pytest.mark.parametrize("backend", ["auto", "native"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_empty_batch_gives_zero_gradients_like_conv(backend, dims):
    layer = LAYERS[dims](4, 4, 3, 5, padding="same", groups=4, version="bilinear", backend=backend)
    conv = fuse(layer)
    x = torch.randn(0, 4, *[6] * dims, requires_grad=True)
    y = layer(x)
    assert y.shape == conv(x).shape == (0, 4, *[6] * dims)
    y.sum().backward()
    conv(x).sum().backward()
    assert torch.count_nonzero(layer.weight.grad) == 0 and torch.count_nonzero(layer.P.grad) == 0
    assert torch.equal(layer.bias.grad, conv.bias.grad)


@pytest.mark.parametrize("version", ["bilinear", "gauss"])
@pytest.mark.parametrize("backend", ["cpu_depthwise", "native"])
def test_double_backward_passes_gradgradcheck(version, backend):
    torch.manual_seed(0)
    layer = Dcls2d(2, 2, 3, 5, padding="same", groups=2, version=version, backend=backend).double()
    with torch.no_grad():  # off the tap boundaries, where finite differences are smooth
        layer.P.copy_(torch.tensor([0.31, -0.62, 1.17]).expand_as(layer.P) * torch.tensor([1.0, -0.7]).view(2, 1, 1, 1))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    parameters = [layer.weight, layer.P, layer.bias] + ([layer.SIG] if layer.SIG is not None else [])

    def function(x, *params):
        weight, P, bias, *rest = params
        return dcls_conv(x, weight, P, rest[0] if rest else None, 5, bias, padding="same", groups=2,
                         version=version, backend=backend)

    assert torch.autograd.gradgradcheck(function, (x, *parameters), atol=1e-6)


def test_gradient_penalty_and_maml_step_match_native():
    """Second-order uses (a gradient penalty on the input, a MAML inner step) give the same
    result on the default CPU backend as on the plain-autograd one."""
    torch.manual_seed(0)
    results = {}
    for backend in ("auto", "native"):
        torch.manual_seed(0)
        layer = Dcls2d(3, 3, 4, 7, padding="same", groups=3, version="bilinear", backend=backend).double()
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
        (grad_x,) = torch.autograd.grad(layer(x).square().sum(), [x], create_graph=True)
        penalty = grad_x.square().sum()
        penalty_grads = torch.autograd.grad(penalty, [layer.weight, layer.P])
        inner = torch.autograd.grad(layer(x).sum(), [layer.weight, layer.P], create_graph=True)
        adapted = dcls_conv(x, layer.weight - 0.1 * inner[0], layer.P - 0.1 * inner[1], None, 7, layer.bias,
                            padding="same", groups=3, version="bilinear", backend=backend)
        meta_grads = torch.autograd.grad(adapted.square().sum(), [layer.weight, layer.P])
        results[backend] = (*penalty_grads, *meta_grads)
    for got, want in zip(results["auto"], results["native"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- non-finite positions


@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
def test_nan_positions_are_named(version):
    layer = Dcls2d(4, 4, 5, 9, padding="same", groups=4, version=version)
    with torch.no_grad():
        layer.P[1, 2, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"P holds 1 non-finite value\(s\) of 40 \(first: P\[1, 2, 0, 3\] = nan\)"):
        layer(torch.randn(1, 4, 10, 10))


def test_nan_positions_loaded_from_a_file_are_named(tmp_path):
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3)
    state = model.state_dict()
    state["stages.2.dcls_shared.conv_dw.P"][0, 5, 0, 1] = float("inf")
    torch.save(state, tmp_path / "weights.pth")
    fresh = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3).eval()
    fresh.load_state_dict(torch.load(tmp_path / "weights.pth", weights_only=True))
    with pytest.raises(ValueError, match=r"P holds 1 non-finite value\(s\).*P\[0, 5, 0, 1\] = inf"):
        with torch.no_grad():
            fresh(torch.randn(1, 3, 32, 32))


def test_nan_taps_never_index_out_of_range():
    """Where the layers do not check (GPUs), NaN positions give NaN kernels, not bad indices."""
    positions = torch.tensor([[[float("nan"), 0.3]], [[0.2, float("nan")]]])
    kernel = dcls_zoo.construct.construct_kernel(torch.ones(1, 2), positions, None, (5, 5), "bilinear")
    assert kernel.shape == (1, 5, 5) and torch.isnan(kernel).any()


# ----------------------------------------------------------------------------- argument parity


def test_numpy_integers_are_accepted_like_conv():
    args = dict(stride=np.int64(1), padding=np.int32(3), groups=np.int64(4))
    conv = nn.Conv2d(np.int64(4), np.int64(4), np.int64(7), **args)
    layer = Dcls2d(np.int64(4), np.int64(4), np.int64(5), np.int64(7), **args)
    x = torch.randn(1, 4, 9, 9)
    assert layer(x).shape == conv(x).shape
    assert isinstance(layer.in_channels, int) and layer.dilated_kernel_size == (7, 7)


@pytest.mark.parametrize("padding_mode,padding,size", [("reflect", 4, 4), ("reflect", 6, 5), ("circular", 6, 5)])
@pytest.mark.parametrize("spread", [False, True])
def test_too_wide_reflect_or_circular_padding_is_refused_wherever_the_positions_are(padding_mode, padding, size,
                                                                                    spread):
    conv = nn.Conv2d(2, 2, 2 * padding + 1, padding=padding, padding_mode=padding_mode, groups=2)
    layer = Dcls2d(2, 2, 3, 2 * padding + 1, padding=padding, padding_mode=padding_mode, groups=2,
                   version="bilinear")
    if spread:
        dcls_zoo.positions.spread_model_positions_(layer)
    else:  # every element at the centre: the crop would need no padding at all
        with torch.no_grad():
            layer.P.zero_()
    x = torch.randn(1, 2, size, size)
    with pytest.raises(RuntimeError):
        conv(x)
    with pytest.raises(ValueError, match=f"padding_mode='{padding_mode}'"):
        layer(x)


def test_reflect_padding_within_the_input_is_accepted():
    layer = Dcls2d(2, 2, 3, 7, padding=3, padding_mode="reflect", groups=2)
    x = torch.randn(1, 2, 4, 4)
    torch.testing.assert_close(layer(x), _reference(layer, x))


# ----------------------------------------------------------------------------- shared footprints


def _count_shared_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = dcls_zoo.shared.axis_footprints

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dcls_zoo.shared, "axis_footprints", counting)
    return calls


def test_warm_eval_cache_builds_no_footprints(monkeypatch):
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        calls = _count_shared_builds(monkeypatch)
        model(x)
    assert calls == []


@pytest.mark.parametrize("version", ["bilinear", "gauss"])
def test_gradient_checkpointing_recomputes_with_fresh_footprints(version):
    """timm's grad checkpointing reruns blocks during backward, after the stage's footprints
    were used by a backward pass: gradients equal those of a plain step."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3, dcls_version=version, dcls_kernel_count=8)
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(1)
        model(torch.randn(2, 3, 32, 32)).square().sum().backward()
        grads.append([p.grad.clone() for p in dcls_zoo.position_parameters(model)])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_shared_footprints_hold_no_graph_after_backward():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3, dcls_version="gauss", dcls_kernel_count=8)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    holders = [h.owner for h in dcls_zoo.position_owners(model)]
    assert all(holder._footprint_cache.entry is None for holder in holders)
    copy.deepcopy(model)  # nothing non-leaf is left to copy


def test_eval_cache_sees_data_edits_of_shared_positions():
    """A .data edit bumps no version: the cached kernel of every layer of the group must follow."""
    shared = dcls_zoo.shared.SharedPositions((4, 1, 5), (9, 9), "gauss")
    first, second = (Dcls2d(4, 4, 5, 9, padding="same", groups=4, version="gauss", shared_positions=shared).eval()
                     for _ in range(2))
    x = torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        first(x), second(x)
        second.weight.data.mul_(2)
        second(x)
        shared.P.data.add_(1.0)
        for layer in (first, second):
            torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-5, atol=1e-6)


def test_arguments_are_checked_whatever_is_memoised():
    weight, P = torch.randn(4, 1, 3), torch.zeros(2, 4, 1, 3)
    x = torch.randn(1, 4, 8, 8)
    dcls_conv(x, weight, P, None, 5, groups=4, version="bilinear")  # memoises window 5, groups 4
    with pytest.raises(TypeError, match="dilated_kernel_size must be an int"):
        dcls_conv(x, weight, P, None, 5.0, groups=4, version="bilinear")
    with pytest.raises(TypeError, match="groups must be an int"):
        dcls_conv(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3), torch.zeros(2, 1, 1, 3), None, 5, groups=True,
                  version="bilinear")


def test_changed_padding_attribute_is_used_by_every_path():
    layer = Dcls2d(2, 2, 3, 5, padding=2, groups=2, version="bilinear").eval()
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        layer(x)  # fills the cache with the kernel for padding 2
        layer.padding = (1, 1)
        y = layer(x)
    assert y.shape == (1, 2, 6, 6)
    torch.testing.assert_close(y, _reference(layer, x).detach())
