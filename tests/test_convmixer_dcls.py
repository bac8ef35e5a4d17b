"""ConvMixer-dcls: timm's ConvMixer with DCLS depthwise layers at equal parameters, and its baselines."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm.models.convmixer import ConvMixer

import dcls_zoo
from dcls_zoo import Dcls2d, create_model, list_models
from dcls_zoo.models import ConvMixerDcls


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared tensors once


def test_registered_in_timm_and_listed():
    names = {"convmixer_dcls_64_8", "convmixer_64_8_k5", "convmixer_64_8_k13"}
    assert names <= set(list_models()) and all(timm.is_model(name) for name in names)
    model = timm.create_model("convmixer_dcls_64_8", num_classes=3)
    assert isinstance(model, ConvMixerDcls) and isinstance(model, ConvMixer) and model.head.out_features == 3


def test_dcls_keeps_the_dense_models_parameters_exactly_with_one_position_tensor():
    dense = create_model("convmixer_64_8_k5", num_classes=10, in_chans=1)
    dcls = create_model("convmixer_dcls_64_8", num_classes=10, in_chans=1)
    assert _params(dcls) == _params(dense) == 49_738
    # equal parameters: 8 layers x 25 weights per channel = 8 x K weights + 2 x K shared positions
    layers = [module for module in dcls.modules() if isinstance(module, Dcls2d)]
    assert len(layers) == 8 and {layer.kernel_count for layer in layers} == {8 * 25 // (8 + 2)}
    assert {layer.dilated_kernel_size for layer in layers} == {(13, 13)}
    assert [key for key in dcls.state_dict() if key.endswith(".P")] == ["dcls_shared.conv_dw.P"]
    assert all(layer.P is dcls.dcls_shared.conv_dw.P for layer in layers)
    assert [group.path for group in dcls_zoo.position_owners(dcls)] == ["dcls_shared.conv_dw"]
    # everything but the depthwise layers is the dense model's, name for name
    others = {k: v.shape for k, v in dcls.state_dict().items() if ".0.fn.0." not in k and "dcls_shared" not in k}
    assert others == {k: v.shape for k, v in dense.state_dict().items() if ".0.fn.0." not in k}
    wide = create_model("convmixer_64_8_k13", num_classes=10, in_chans=1)
    assert wide.blocks[0][0].fn[0].kernel_size == (13, 13) and _params(wide) == 123_466


def test_positions_per_layer_and_uniform_start():
    torch.manual_seed(0)
    model = create_model("convmixer_dcls_64_8", dcls_share="layer", dcls_position_init="uniform")
    owners = dcls_zoo.position_owners(model)
    assert [owner.path for owner in owners] == [f"blocks.{i}.0.fn.0" for i in range(8)]
    assert {owner.owner.kernel_count for owner in owners} == {25 // 3}  # weights + 2 positions each
    positions = torch.cat([owner.owner.P.detach().flatten() for owner in owners])
    assert positions.abs().max() <= 6 and positions.std().item() == pytest.approx(12 / 12**0.5, rel=0.05)


def test_forward_at_28_and_32_px_keeps_the_map_and_trains_the_positions():
    torch.manual_seed(0)
    model = create_model("convmixer_dcls_64_8", num_classes=10, in_chans=1, dcls_position_init="uniform")
    for size in (28, 32):
        features = model.forward_intermediates(torch.randn(2, 1, size, size), intermediates_only=True)
        assert [f.shape[-1] for f in features] == [size // 2] * 8  # every block at the full map
    loss = model(torch.randn(4, 1, 32, 32)).logsumexp(-1).mean()
    loss.backward()
    (positions,) = dcls_zoo.position_parameters(model)
    assert positions.grad is not None and positions.grad.abs().sum() > 0


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="dcls_share must be 'model' or 'layer', got 'stage'"):
        create_model("convmixer_dcls_64_8", dcls_share="stage")
    with pytest.raises(ValueError, match="dcls_position_init must be 'normal' or 'uniform', got 'spread'"):
        create_model("convmixer_dcls_64_8", dcls_position_init="spread")
    with pytest.raises(ValueError, match=r"dcls_kernel_size must be an odd int >= kernel_size \(5\) or None, got 12"):
        create_model("convmixer_dcls_64_8", dcls_kernel_size=12)


def test_scripts_and_traces():
    torch.manual_seed(0)
    model = create_model("convmixer_dcls_64_8", num_classes=7, dcls_position_init="uniform").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.10+
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dcls_zoo.fuse(model)(x), expected, rtol=1e-5, atol=1e-5)
        # channels-last memory is a speed choice only: the same function either way
        model.channels_last = False
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    model.train()  # batch statistics: the same batch gives the same output with gradient checkpointing
    plain = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), plain, rtol=1e-5, atol=1e-5)
