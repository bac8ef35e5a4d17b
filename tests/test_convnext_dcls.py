"""ConvNeXt-dcls family: the paper's sizes, shared positions, timm integration, training."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers import multiply_adds
from safetensors.torch import load_file, save_file

import dcls_zoo
from dcls_zoo import create_model, list_models


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,params_m,macs_g",
    [("convnext_dcls_tiny", 28.6, 5.0), ("convnext_dcls_small", 50.2, 9.5), ("convnext_dcls_base", 88.6, 16.5)],
)
def test_paper_parameter_counts_and_multiply_adds(name, params_m, macs_g):
    model = create_model(name).eval()
    assert _params(model) / 1e6 == pytest.approx(params_m, abs=0.05)
    assert multiply_adds(model) / 1e9 == pytest.approx(macs_g, abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_gaussian_variants_keep_the_7x7_parameter_count(size):
    ours, baseline = create_model(f"convnext_dcls_gauss_{size}"), timm.create_model(f"convnext_{size}")
    assert abs(_params(ours) - _params(baseline)) / _params(baseline) < 1e-3
    shared = ours.stages[0].dcls_shared.conv_dw
    assert shared.SIG is not None and shared.P.shape[1:] == (ours.stages[0].blocks[0].conv_dw.out_channels, 1,
                                                             ours.dclsify_report.kernel_count)


def test_ablation_baselines():
    dilated = create_model("convnext_tiny_dil2")
    conv = dilated.stages[0].blocks[0].conv_dw
    assert conv.kernel_size == (7, 7) and conv.dilation == (2, 2) and conv.padding == (6, 6)
    assert _params(dilated) == _params(timm.create_model("convnext_tiny"))
    dense = create_model("convnext_tiny_k17")
    assert dense.stages[3].blocks[0].conv_dw.weight.shape == (768, 1, 17, 17)
    x = torch.randn(1, 3, 64, 64)
    assert dilated(x).shape == dense(x).shape == (1, 1000)


@pytest.mark.parametrize("size", ["atto", "femto", "pico", "nano"])
def test_compact_variants_match_timm_widths_at_equal_parameters(size):
    reference = _params(timm.create_model(f"convnext_{size}"))
    ours = create_model(f"convnext_dcls_{size}")
    assert 0.99 * reference <= _params(ours) <= reference
    assert _params(create_model(f"convnext_k7_{size}")) == reference


@pytest.mark.parametrize("name", ["convnext_dcls_atto", "convnext_k7_atto"])
def test_small_stem_keeps_resolution_for_small_images(name):
    model = create_model(name, stem="small", num_classes=10)
    features = model.forward_intermediates(torch.randn(2, 3, 28, 28), intermediates_only=True)
    assert [f.shape[-1] for f in features] == [28, 14, 7, 3]
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_quickstart_geometry_windows_sized_to_their_maps_at_equal_parameters_per_stage():
    """A 3x3 stride-2 stem: 32 px images -> 16/8/4/2 px maps, each stage's window min(17, 2m - 1):
    from any pixel a tap reaches the whole map and no further."""
    windows = (17, 15, 7, 3)
    model = create_model("convnext_dcls_atto", num_classes=10, in_chans=1, stem="small", stem_stride=2,
                         dcls_kernel_size=windows)
    baseline = create_model("convnext_k7_atto", num_classes=10, in_chans=1, stem="small", stem_stride=2)
    features = model.forward_intermediates(torch.randn(2, 1, 32, 32), intermediates_only=True)
    maps = [f.shape[-1] for f in features]
    assert maps == [16, 8, 4, 2] and model.feature_info[0]["reduction"] == 2
    assert [min(17, 2 * m - 1) for m in maps] == list(windows)
    for index, (stage, base_stage) in enumerate(zip(model.stages, baseline.stages)):
        layers = [block.conv_dw for block in stage.blocks]
        assert {layer.dilated_kernel_size for layer in layers} == {(windows[index],) * 2}
        ours = _params(torch.nn.ModuleList(layers))  # each layer holds the stage's positions: counted once
        theirs = sum(_params(block.conv_dw) for block in base_stage.blocks)
        # equal parameters per stage: the largest count whose weights + shared positions fit in the 7x7 weights
        count = layers[0].kernel_count
        per_element = sum(layer.weight[..., 0].numel() for layer in layers) + 2 * layers[0].weight[..., 0].numel()
        assert ours <= theirs < ours + per_element + len(layers) * layers[0].out_channels  # (+ biases)
        assert count == (49 * len(layers)) // (len(layers) + 2)
    assert abs(_params(model) - _params(baseline)) < 0.001 * _params(baseline)


def test_uniform_position_init_covers_each_window():
    torch.manual_seed(0)
    model = create_model("convnext_dcls_atto", stem="small", stem_stride=2, dcls_kernel_size=(17, 15, 7, 3),
                         dcls_position_init="uniform")
    for stage, window in zip(model.stages, (17, 15, 7, 3)):
        positions = stage.dcls_shared.conv_dw.P.detach()
        half = window // 2
        assert positions.abs().max() <= half
        assert positions.std().item() == pytest.approx(2 * half / 12**0.5, rel=0.05)  # uniform on [-half, half]
        assert (positions.abs() > 0.75 * half).float().mean().item() == pytest.approx(0.25, abs=0.03)
    normal = create_model("convnext_dcls_atto").stages[0].dcls_shared.conv_dw.P.detach()
    assert normal.std().item() == pytest.approx(0.5, rel=0.1)  # the paper's N(0, 0.5)


def test_positions_are_stored_once_per_stage_and_survive_safetensors(tmp_path):
    torch.manual_seed(0)
    model = create_model("convnext_dcls_gauss_tiny", num_classes=5).eval()
    keys = list(model.state_dict())
    assert [k for k in keys if k.endswith(".P")] == [f"stages.{i}.dcls_shared.conv_dw.P" for i in range(4)]
    assert [k for k in keys if k.endswith(".SIG")] == [f"stages.{i}.dcls_shared.conv_dw.SIG" for i in range(4)]
    # one Parameter per stage: every block of the stage uses the same object
    stage = model.stages[2]
    assert all(block.conv_dw.P is stage.dcls_shared.conv_dw.P for block in stage.blocks)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    clone = create_model("convnext_dcls_gauss_tiny", num_classes=5).eval()
    clone.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(clone(x), model(x))


def test_footprints_are_built_once_per_stage_forward(monkeypatch):
    import dcls_zoo.shared as shared_module

    calls = []
    original = shared_module.axis_footprints

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(shared_module, "axis_footprints", counting)
    model = create_model("convnext_dcls_atto")
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    assert len(calls) == 4  # one per stage, not one per block (12 blocks)
    calls.clear()
    model(torch.randn(1, 3, 64, 64))  # a second forward builds them again (fresh graph)
    assert len(calls) == 4


def test_training_step_moves_shared_positions_once_per_step():
    torch.manual_seed(0)
    model = create_model("convnext_dcls_atto", num_classes=4, stem="small")
    names = [name for name, _ in model.named_parameters()]
    assert sum(name.endswith(".P") for name in names) == 4  # the optimizer sees each stage's P once
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.stages[1].dcls_shared.conv_dw.P.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    dcls_zoo.clamp_model_positions_(model)
    after = model.stages[1].dcls_shared.conv_dw.P
    assert not torch.equal(before, after)
    assert after.abs().max() <= 8


def test_deepcopy_keeps_sharing_inside_the_copy_only():
    model = create_model("convnext_dcls_atto")
    twin = copy.deepcopy(model)
    shared, twin_shared = model.stages[0].dcls_shared.conv_dw, twin.stages[0].dcls_shared.conv_dw
    assert twin_shared is not shared
    assert all(block.conv_dw.shared_positions is twin_shared for block in twin.stages[0].blocks)
    with torch.no_grad():
        twin_shared.P.add_(1.0)
    x = torch.randn(1, 3, 48, 48)
    assert not torch.allclose(twin(x), model(x))


@pytest.mark.parametrize("stem,reductions", [("patch", [4, 8, 16, 32]), ("small", [1, 2, 4, 8])])
def test_features_only_backbone(stem, reductions):
    model = create_model("convnext_dcls_atto", features_only=True, stem=stem)
    assert model.feature_info.reduction() == reductions
    assert model.feature_info.channels() == [40, 80, 160, 320]
    features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [40, 80, 160, 320]
    assert [64 // f.shape[-1] for f in features] == reductions
    assert sum(name.endswith(".P") for name in model.state_dict()) == 4


def test_registered_in_timm_and_listed():
    names = list_models()
    for name in ("convnext_dcls_tiny", "convnext_dcls_small", "convnext_dcls_base", "convnext_dcls_gauss_tiny",
                 "convnext_tiny_dil2", "convnext_tiny_k17", "convnext_dcls_atto", "convnext_k7_atto"):
        assert name in names and timm.is_model(name)
    model = timm.create_model("convnext_dcls_atto", num_classes=3)
    assert isinstance(model, dcls_zoo.models.ConvNeXtDcls) and model.head.fc.out_features == 3
    cfg = timm.models.get_pretrained_cfg("convnext_dcls_tiny.in1k")
    assert cfg.url.endswith("convnext_dcls_tiny_1k_224_ema.pth") and "zenodo" in cfg.url


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'convnext_dcls_tinny'; did you mean convnext_dcls_tiny"):
        create_model("convnext_dcls_tinny")
    with pytest.raises(ValueError, match="unknown model 'qwerty'; dcls-zoo models: "):
        create_model("qwerty")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="stem must be 'patch' or 'small'"):
        create_model("convnext_dcls_atto", stem="tiny")
    with pytest.raises(ValueError, match="dw_dilation is for plain-conv baselines"):
        create_model("convnext_dcls_atto", dw_dilation=2)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2 and needs stem='small'"):
        create_model("convnext_dcls_atto", stem_stride=2)
    with pytest.raises(ValueError, match=r"dcls_kernel_size must be an int or one int per stage \(4\)"):
        create_model("convnext_dcls_atto", dcls_kernel_size=(17, 9))
    with pytest.raises(ValueError, match="dcls_position_init must be 'normal' or 'uniform'"):
        create_model("convnext_dcls_atto", dcls_position_init="spread")
