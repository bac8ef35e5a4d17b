"""Inference: the cached eval kernel and its invalidation, fuse() to plain convs, and export."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dcls_zoo
from dcls_zoo import Dcls1d, Dcls2d, Dcls3d, fuse


@pytest.fixture
def counted_layer(monkeypatch):
    """A Dcls2d whose kernel builds are counted."""
    layer = Dcls2d(4, 4, 5, 9, padding="same", groups=4, version="gauss")
    builds = []
    original = dcls_zoo.functional._kernel

    def counting_kernel(*args, **kwargs):
        builds.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dcls_zoo.functional, "_kernel", counting_kernel)
    return layer, builds


def test_eval_kernel_is_built_once(counted_layer):
    layer, builds = counted_layer
    x = torch.randn(2, 4, 12, 12)
    layer.eval()
    with torch.no_grad():
        first = layer(x)
        second = layer(x)
    with torch.inference_mode():
        layer(x)
    assert len(builds) == 1
    torch.testing.assert_close(first, second)


def test_training_forward_never_uses_the_cache(counted_layer):
    layer, builds = counted_layer
    x = torch.randn(2, 4, 12, 12)
    layer.train()
    layer(x).sum().backward()
    layer(x).sum().backward()
    assert len(builds) == 2 and layer.P.grad is not None


def test_eval_with_gradients_caches_only_frozen_parameters(counted_layer):
    layer, builds = counted_layer
    x = torch.randn(2, 4, 12, 12)
    layer.eval()
    layer(x).sum().backward()  # fine-tuning in eval mode (e.g. frozen norms): gradients must flow
    assert layer.weight.grad is not None and len(builds) == 1
    layer.requires_grad_(False)
    layer(x)
    layer(x)
    assert len(builds) == 2


def _fresh_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    twin = copy.deepcopy(layer)
    twin.__dict__.pop("_kernel_cache", None)
    with torch.no_grad():
        return twin(x)


@pytest.mark.parametrize("change", ["optimizer_step", "load_state_dict", "clamp", "to_double", "data_assignment"])
def test_cache_is_invalidated_when_parameters_change(change):
    torch.manual_seed(0)
    layer = Dcls2d(3, 3, 4, 7, padding="same", groups=3, version="bilinear").eval()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        before = layer(x)
    if change == "optimizer_step":
        optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
        layer.train()
        layer(x).square().sum().backward()
        optimizer.step()
        layer.eval()
    elif change == "load_state_dict":
        other = Dcls2d(3, 3, 4, 7, padding="same", groups=3, version="bilinear")
        layer.load_state_dict(other.state_dict())
    elif change == "clamp":
        with torch.no_grad():
            layer.P.add_(10.0)
        layer.clamp_positions_()
    elif change == "to_double":
        layer.double()
        x = x.double()
    elif change == "data_assignment":
        layer.weight.data = torch.randn_like(layer.weight)
    with torch.no_grad():
        after = layer(x)
    if change == "to_double":  # same values, but the stale float32 kernel must not be reused
        assert after.dtype == torch.float64
    else:
        assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _fresh_output(layer, x))


def test_cache_follows_shared_positions():
    # layer scale 1 (timm's default 1e-6 would hide the blocks' contributions)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3, ls_init_value=1.0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.stages[0].dcls_shared.conv_dw.P.mul_(-1.0)
        after = model(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _fresh_output(model, x))


@pytest.mark.parametrize("make_layer,shape", [
    (lambda: Dcls1d(3, 6, 4, 11, padding="same", version="gauss"), (2, 3, 20)),
    (lambda: Dcls2d(4, 4, 5, (9, 6), padding="same", groups=4, version="bilinear"), (2, 4, 13, 11)),
    (lambda: Dcls2d(4, 8, 3, 7, stride=2, padding=3, groups=2, padding_mode="reflect", version="triangle"),
     (2, 4, 15, 15)),
    (lambda: Dcls3d(2, 2, 3, (5, 3, 3), padding="valid", learned_axes=(0,), version="gauss"), (1, 2, 8, 6, 6)),
])
def test_fused_layer_is_a_plain_conv_with_equal_outputs(make_layer, shape):
    torch.manual_seed(3)
    layer = make_layer()
    conv = fuse(layer)
    assert type(conv) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained_like_model():
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, stem="small", ls_init_value=1.0)
    with torch.no_grad():  # spread positions and weights as after training
        for module in model.modules():
            if isinstance(module, dcls_zoo.shared.SharedPositions):
                module.P.uniform_(-8, 8)
    return model.eval()


def test_fused_model_matches_and_has_no_dcls_left(trained_like_model):
    fused = fuse(trained_like_model)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), trained_like_model(x), rtol=1e-5, atol=1e-5)
    assert not dcls_zoo.dcls_layers(fused)
    assert not any(k.endswith((".P", ".SIG")) for k in fused.state_dict())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in fused.modules())
    assert dcls_zoo.dcls_layers(trained_like_model)  # the original is untouched


@pytest.mark.slow
def test_fused_model_exports_to_onnx_and_runs_in_onnxruntime(trained_like_model, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    fused = fuse(trained_like_model)
    x = torch.randn(2, 3, 28, 28)
    path = tmp_path / "model.onnx"
    torch.onnx.export(fused, (x,), str(path), input_names=["images"], output_names=["logits"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), trained_like_model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_fused_model_exports_with_torch_export_and_torchscript(trained_like_model):
    fused = fuse(trained_like_model)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = trained_like_model(x)
        exported = torch.export.export(fused, (x,))
        torch.testing.assert_close(exported.module()(x), expected, rtol=1e-5, atol=1e-5)
        scripted = torch.jit.script(fused)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
