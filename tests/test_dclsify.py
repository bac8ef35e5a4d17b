"""dclsify on timm architectures: what it converts, the paper's equal-parameter kernel count,
positions shared per stage (one Parameter, footprints built once per stage forward, deepcopy),
non-square band kernels, and its errors."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import dcls_zoo.layers
import dcls_zoo.shared
from dcls_zoo.construct import position_bounds
from dcls_zoo.layers import Dcls2d, DclsConvNd
from dcls_zoo.models import dclsify
from dcls_zoo.positions import clamp_model_positions_, stage_of
from dcls_zoo.shared import SharedPositions


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _target_paths(model: nn.Module, targets: str) -> list[str]:
    """Independent enumeration of what dclsify should convert: k x k (k > 1) plain convolutions."""
    return [
        path
        for path, m in model.named_modules()
        if type(m) is nn.Conv2d
        and m.kernel_size != (1, 1)
        and (targets == "all" or m.groups == m.in_channels == m.out_channels)
    ]


def _position_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if name.endswith(".P") or name.endswith(".SIG")}


def _count_footprints(monkeypatch, module) -> list[int]:
    """Count calls of ``module.axis_footprints`` (shared: once per group build; layers: per layer)."""
    calls: list[int] = []
    original = module.axis_footprints

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "axis_footprints", counting)
    return calls


def _training_step(model: nn.Module, num_classes: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on 2x3x64x64; returns the output and the loss."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 64, 64)
    output = model(x)
    loss = nn.functional.cross_entropy(output, torch.tensor([0, num_classes - 1]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return output, loss


# (model, create kwargs, dclsify kwargs). resnet18: timm's zero_init_last zeroes the residual
# branches' gradients on the first step, so it is off; the first block of a stage changes the
# channel count, so per-stage sharing of its conv1 is impossible: share="layer".
ARCHITECTURES = [
    ("convnextv2_atto", {}, {}),
    ("inception_next_atto", {}, {}),
    ("convformer_s18", {}, {}),
    ("resnet18", {"zero_init_last": False}, {"targets": "all", "dilated_kernel_size": 7, "share": "layer"}),
]


@pytest.mark.parametrize(("name", "create_kwargs", "dclsify_kwargs"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_converts_architecture(name: str, create_kwargs: dict, dclsify_kwargs: dict):
    model = _build(name, **create_kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        shape_before = model(x).shape
    params_before = _param_count(model)
    expected = _target_paths(model, dclsify_kwargs.get("targets", "depthwise"))

    report = dclsify(model, **dclsify_kwargs)

    assert sorted(c.path for c in report.converted) == sorted(expected)
    assert all(isinstance(model.get_submodule(path), DclsConvNd) for path in expected)
    assert not report.skipped
    params_after = _param_count(model)
    assert 0.97 * params_before <= params_after <= params_before
    assert report.params_after <= report.params_before
    with torch.no_grad():
        assert model.eval()(x).shape == shape_before

    _, loss = _training_step(model)
    assert torch.isfinite(loss)
    positions = _position_params(model)
    assert positions
    for path, param in positions.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), path
        assert param.grad.abs().sum() > 0, path


def _convnext_depthwise_by_stage(model: nn.Module) -> dict[str, list[nn.Conv2d]]:
    stages: dict[str, list[nn.Conv2d]] = {}
    for path in _target_paths(model, "depthwise"):
        stages.setdefault(".".join(path.split(".")[:2]), []).append(model.get_submodule(path))
    return stages


@pytest.mark.parametrize(
    ("share", "version", "positions_per_element"),
    [("stage", "bilinear", 2), ("layer", "bilinear", 2), ("stage", "gauss", 4)],
)
def test_kernel_count_is_the_papers_equal_parameter_count(share: str, version: str, positions_per_element: int):
    """The paper's rule, computed here from scratch: one count for the whole model, the largest
    whose weights + positions (+ widths) do not exceed the replaced 7x7 weights."""
    model = _build("convnextv2_atto")
    stages = _convnext_depthwise_by_stage(model)
    original = sum(conv.weight.numel() for convs in stages.values() for conv in convs)

    def converted_params(count: int) -> int:
        total = 0
        for convs in stages.values():
            channels = convs[0].out_channels  # depthwise: one (output, input) pair per channel
            total += len(convs) * channels * count  # weights
            owners = 1 if share == "stage" else len(convs)  # one position tensor per stage, or per layer
            total += owners * positions_per_element * channels * count
        return total

    expected = max(k for k in range(1, 200) if converted_params(k) <= original)
    report = dclsify(model, 17, version=version, share=share)
    assert report.kernel_count == expected
    # and the model really holds that many converted parameters (biases aside)
    weights = sum(model.get_submodule(c.path).weight.numel() for c in report.converted)
    assert weights + sum(p.numel() for p in _position_params(model).values()) == converted_params(expected)
    # by hand for atto (widths 40/80/160/320, depths 2/2/6/2): 49 * 1840 original weights over
    # 1840 + 2 * 600 (stage), 3 * 1840 (layer) or 1840 + 4 * 600 (gauss) parameters per element
    assert expected == {("stage", "bilinear"): 29, ("layer", "bilinear"): 16, ("stage", "gauss"): 21}[share, version]


def test_band_kernels_stay_bands():
    """InceptionNeXt's 1 x 9 / 9 x 1 depthwise bands keep their size-1 axis and learn positions
    along the long axis only; its 3x3 depthwise conv gets the square window."""
    model = _build("inception_next_atto")
    report = dclsify(model, 17)
    windows = {c.path.rsplit(".", 1)[1]: (c.kernel_size, c.dilated_kernel_size) for c in report.converted}
    assert windows == {
        "dwconv_hw": ((3, 3), (17, 17)),
        "dwconv_w": ((1, 9), (1, 17)),
        "dwconv_h": ((9, 1), (17, 1)),
    }
    mixer = model.stages[1].blocks[0].token_mixer
    channels, count = mixer.dwconv_w.in_channels, report.kernel_count
    assert mixer.dwconv_w.learned_axes == (1,) and mixer.dwconv_h.learned_axes == (0,)
    shared = model.stages[1].dcls_shared
    assert shared["token_mixer_dwconv_w"].P.shape == (1, channels, 1, 1, count)  # one position per element
    assert shared["token_mixer_dwconv_h"].P.shape == (1, channels, 1, 1, count)
    assert shared["token_mixer_dwconv_hw"].P.shape == (2, channels, 1, count)
    assert mixer.dwconv_w.kernel().shape == (channels, 1, 1, 17)
    assert mixer.dwconv_h.kernel().shape == (channels, 1, 17, 1)


def test_share_layer_gives_one_position_tensor_per_layer():
    model = _build("convnextv2_atto")
    report = dclsify(model, 17, share="layer")
    assert sorted(_position_params(model)) == sorted(f"{c.path}.P" for c in report.converted)
    assert all(c.shared_group is None for c in report.converted)
    assert not any(isinstance(m, SharedPositions) for m in model.modules())


def _share_from_stage_1(path: str) -> str | None:
    """Stage 0: each layer owns its positions; later stages: one group each, owned by the model root."""
    stage = stage_of(path)
    return None if stage == "stages.0" else "/" + stage.replace(".", "_")


def test_custom_share_callable(monkeypatch):
    model = _build("convnextv2_atto")
    report = dclsify(model, 17, share=_share_from_stage_1)
    assert sorted(_position_params(model)) == [
        "dcls_shared.stages_1.P",
        "dcls_shared.stages_2.P",
        "dcls_shared.stages_3.P",
        "stages.0.blocks.0.conv_dw.P",
        "stages.0.blocks.1.conv_dw.P",
    ]
    assert {c.shared_group for c in report.converted} == {None, "/stages_1", "/stages_2", "/stages_3"}
    for block in model.stages[2].blocks:
        assert block.conv_dw.P is model.dcls_shared["stages_2"].P
    shared_calls = _count_footprints(monkeypatch, dcls_zoo.shared)
    own_calls = _count_footprints(monkeypatch, dcls_zoo.functional)
    model(torch.randn(1, 3, 64, 64))  # with autograd: the layers' no-grad kernel cache stays out of the count
    # the root owns the groups, so each is built once per model forward; stage 0 once per layer
    assert (len(shared_calls), len(own_calls)) == (3, 2)


def test_stage_positions_are_one_parameter_seen_once_by_the_optimizer():
    model = _build("convnextv2_atto")
    dclsify(model, 17)
    optimizer = torch.optim.AdamW(model.parameters())
    optimized = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(optimized) == len(set(optimized))
    for stage in model.stages:
        shared = stage.dcls_shared["conv_dw"]
        assert all(block.conv_dw.P is shared.P for block in stage.blocks)
        assert optimized.count(id(shared.P)) == 1
    keys = [k for k in model.state_dict() if k.endswith(".P")]
    assert keys == [f"stages.{i}.dcls_shared.conv_dw.P" for i in range(4)]


def test_footprints_built_once_per_stage_forward(monkeypatch):
    model = _build("convnextv2_atto")
    dclsify(model, 17)
    calls = _count_footprints(monkeypatch, dcls_zoo.shared)
    # Forwards with autograd on: under no_grad the layers may reuse a cached dense kernel and
    # build no footprints at all, which is not what is counted here.
    _training_step(model)  # forward + backward: backward reuses the forward's footprints
    assert len(calls) == 4
    model.eval()(torch.randn(1, 3, 32, 32))
    assert len(calls) == 8
    # bilinear footprints hold no graph of their own, so keeping them past the forward keeps no graph alive
    assert all(m._footprint_cache.entry.footprints.graph_node() is None
               for m in model.modules() if isinstance(m, SharedPositions))
    # a layer called on its own (outside its stage's forward) builds its own footprints
    model.stages[0].blocks[0].conv_dw(torch.randn(1, 40, 8, 8))
    assert len(calls) == 9


def test_deepcopy_shares_within_the_copy_only(monkeypatch):
    """The EMA use case: a deep copy shares its own positions and its hooks act on the copy."""
    model = _build("convnextv2_atto")
    dclsify(model, 17)
    ema = copy.deepcopy(model)
    for stage, ema_stage in zip(model.stages, ema.stages):
        shared, ema_shared = stage.dcls_shared["conv_dw"], ema_stage.dcls_shared["conv_dw"]
        assert ema_shared is not shared and ema_shared.P is not shared.P
        torch.testing.assert_close(ema_shared.P, shared.P)
        assert all(block.conv_dw.shared_positions is ema_shared for block in ema_stage.blocks)

    # one EMA update per step: the state dict lists each shared tensor once, not once per block
    with torch.no_grad():
        model.stages[1].dcls_shared["conv_dw"].P.add_(1.0)
        ema_state = ema.state_dict()
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                ema_state[key].lerp_(value, 0.5)
    torch.testing.assert_close(
        ema.stages[1].dcls_shared["conv_dw"].P, model.stages[1].dcls_shared["conv_dw"].P - 0.5
    )

    # had the copied hooks opened the original's scopes, the copy's layers would build their
    # footprints block by block (12 calls) instead of stage by stage (4)
    calls = _count_footprints(monkeypatch, dcls_zoo.shared)
    ema(torch.randn(1, 3, 32, 32))  # autograd on: no cached kernels (see the test above)
    assert len(calls) == 4
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 8


def test_sequential_stages_and_custom_groups_on_resnet():
    """timm's ResNet stages are nn.Sequential, whose forward calls every child, dcls_shared included."""
    model = _build("resnet18", zero_init_last=False)

    def share(path: str) -> str | None:
        # the first block's conv1 changes the width (64 -> 128 ...): keep its own positions
        stage = stage_of(path)
        if stage is None or path.endswith(".0.conv1"):
            return None
        return f"{stage}/{path.rsplit('.', 1)[1]}"

    report = dclsify(model, 7, targets="all", share=share)
    assert "layer1.dcls_shared.conv2.P" in model.state_dict()
    assert len(report.converted) == 17  # stem + 16 block convs
    output, loss = _training_step(model)
    assert output.shape == (2, 1000) and torch.isfinite(loss)


def test_include_filter_keeps_the_stem():
    model = _build("resnet18")
    block_convs = [p for p in _target_paths(model, "all") if p != "conv1"]
    pairs = {p: model.get_submodule(p).out_channels * model.get_submodule(p).in_channels for p in block_convs}
    original = sum(model.get_submodule(p).weight.numel() for p in block_convs)
    report = dclsify(model, 7, targets="all", share="layer", include=lambda path, conv: path != "conv1")
    assert type(model.conv1) is nn.Conv2d
    assert sorted(c.path for c in report.converted) == sorted(block_convs)
    # per-layer positions: each element costs 1 weight + 2 positions per channel pair
    assert report.kernel_count == original // (3 * sum(pairs.values()))


def test_even_window_keeps_output_size():
    model = _build("convnextv2_atto").eval()
    x = torch.randn(1, 3, 64, 64)
    dclsify(model, 16)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)
    strided = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8))
    with pytest.raises(ValueError, match="even window"):
        dclsify(strided, 16)


class _TinyNet(nn.Module):
    """A stem and one stage holding a convertible depthwise conv and ``special``."""

    def __init__(self, special: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.stages = nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), special))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def test_no_target_raises():
    with pytest.raises(ValueError, match="no depthwise convolution"):
        dclsify(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1)), 7)
    with pytest.raises(ValueError, match="found no all convolution"):
        dclsify(nn.Sequential(nn.Conv2d(3, 8, 1)), 7, targets="all")


@pytest.mark.parametrize(
    ("special", "reason"),
    [
        (nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), "dilation"),
        (nn.ConvTranspose2d(8, 8, 3, padding=1, groups=8), "ConvTranspose2d"),
        (nn.Conv2d(8, 8, 3, padding="valid", groups=8), "valid"),
    ],
    ids=["dilated", "transposed", "valid-padding"],
)
def test_unsupported_conv_raises_or_is_skipped(special: nn.Module, reason: str):
    with pytest.raises(ValueError, match=rf"'stages\.0\.1'.*{reason}"):
        dclsify(_TinyNet(copy.deepcopy(special)), 7)
    model = _TinyNet(special)
    report = dclsify(model, 7, on_unsupported="skip")
    assert [c.path for c in report.converted] == ["stages.0.0"]
    assert list(report.skipped) == ["stages.0.1"] and reason in report.skipped["stages.0.1"]
    assert model.stages[0][1] is special
    model(torch.randn(1, 3, 12, 12))


def test_group_with_different_shapes_raises():
    # resnet18's layer2.0.conv1 maps 64 -> 128 channels, layer2.1.conv1 128 -> 128
    with pytest.raises(ValueError, match=r"layer2/conv1.*differ in shape"):
        dclsify(_build("resnet18"), 7, targets="all")


def test_clamp_model_positions_clamps_shared_and_own():
    model = _build("convnextv2_atto")
    dclsify(model, 17, share=_share_from_stage_1)
    positions = _position_params(model)
    assert any(".dcls_shared." in n or n.startswith("dcls_shared.") for n in positions)
    assert any(n.startswith("stages.0.blocks.") for n in positions)
    with torch.no_grad():
        for i, param in enumerate(positions.values()):
            param.fill_(100.0 if i % 2 else -100.0)
    clamp_model_positions_(model)
    low, high = position_bounds(17)
    for name, param in positions.items():
        assert param.min() >= low and param.max() <= high, name
        assert param.abs().max() == 8, name  # on the window's edge, not reset


def test_converted_layers_are_plain_dcls2d():
    model = _build("convnextv2_atto")
    report = dclsify(model, 17)
    layer = model.get_submodule(report.converted[0].path)
    assert type(layer) is Dcls2d and layer.groups == layer.in_channels == 40
    assert layer.dilated_kernel_size == (17, 17) and layer.padding == (8, 8)
    assert layer.shared_positions is model.stages[0].dcls_shared["conv_dw"]
