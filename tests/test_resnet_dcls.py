"""ResNet-50-dcls registered in timm: the paper's parameter and multiply-add counts, shared
positions, serialisation, feature extraction and a training step."""

from __future__ import annotations

import copy
import math

import pytest
import safetensors.torch
import timm
import torch
from helpers import counted_multiply_adds, multiply_adds
from timm.models.resnet import Bottleneck
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dcls_zoo.models.resnet_dcls  # noqa: F401  (registers the models in timm)
import dcls_zoo.shared
from dcls_zoo.construct import position_bounds
from dcls_zoo.layers import Dcls2d
from dcls_zoo.models.resnet_dcls import ResNetDcls
from dcls_zoo.positions import clamp_model_positions_

STAGE_WIDTHS = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
BLOCKS = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}


@pytest.fixture(scope="module")
def model() -> ResNetDcls:
    """One resnet50_dcls for the read-only tests (building one costs about a second)."""
    torch.manual_seed(0)
    return timm.create_model("resnet50_dcls").eval()


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a shared P once


def test_registered_with_pretrained_cfg():
    assert {"resnet50_dcls", "resnet50_dcls_k6"} <= set(timm.list_models("resnet50_dcls*"))
    cfg = timm.models.get_pretrained_cfg("resnet50_dcls")
    assert not cfg.has_weights
    assert cfg.origin_url == "https://zenodo.org/records/8373830"
    assert cfg.paper_ids == "arXiv:2112.03740"
    assert cfg.paper_name == "Dilated convolution with learnable spacings"
    # timm's resnet50.a3_in1k data config: train 160, test 224, crop 0.95, bicubic
    a3 = timm.models.get_pretrained_cfg("resnet50.a3_in1k")
    for field in ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "interpolation", "pool_size"):
        assert getattr(cfg, field) == getattr(a3, field), field
    assert (cfg.num_classes, cfg.first_conv, cfg.classifier) == (1000, "conv1", "fc")
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("resnet50_dcls", pretrained=True)


@pytest.mark.parametrize(
    ("name", "kernel_count", "millions"), [("resnet50_dcls", 5, 24.0), ("resnet50_dcls_k6", 6, 26.0)]
)
def test_parameter_count_matches_paper(name: str, kernel_count: int, millions: float):
    model = timm.create_model(name)
    assert model.dclsify_report.kernel_count == kernel_count
    assert abs(_param_count(model) / 1e6 - millions) < 0.05


def test_default_kernel_count_is_the_papers_equal_parameter_count():
    # dclsify's rule (largest count whose weights + per-stage positions fit in the 3x3 weights)
    # gives the paper's 5 for a 7x7 window. Built directly: timm.create_model drops kwargs that
    # are None, so dcls_kernel_count=None there would silently keep the registered 5.
    model = ResNetDcls(block=Bottleneck, layers=(3, 4, 6, 3))
    assert model.dclsify_report.kernel_count == 5
    assert model.dclsify_report.params_after <= model.dclsify_report.params_before
    # Gaussian: 2 positions + 2 widths per element and stage leave room for 4 elements
    gauss = ResNetDcls(block=Bottleneck, layers=(3, 4, 6, 3), dcls_version="gauss")
    assert gauss.dclsify_report.kernel_count == 4
    assert [k for k in gauss.state_dict() if k.startswith("layer1.dcls_shared")] == [
        "layer1.dcls_shared.conv2.P",
        "layer1.dcls_shared.conv2.SIG",
    ]


def test_structure(model: ResNetDcls):
    report = model.dclsify_report
    expected = {f"{stage}.{block}.conv2" for stage, n in BLOCKS.items() for block in range(n)}
    assert {c.path for c in report.converted} == expected
    assert all(c.dilated_kernel_size == (7, 7) and c.kernel_size == (3, 3) for c in report.converted)
    # the 7x7 stem and the 1x1 convs stay plain convolutions
    assert type(model.conv1) is nn.Conv2d and model.conv1.kernel_size == (7, 7)
    plain = {path for path, m in model.named_modules() if type(m) is nn.Conv2d}
    assert not plain & expected
    for path in expected:
        layer = model.get_submodule(path)
        assert isinstance(layer, Dcls2d) and layer.bias is None and layer.version == "bilinear"


def test_one_position_tensor_per_stage(model: ResNetDcls):
    keys = [k for k in model.state_dict() if k.endswith(".P") or k.endswith(".SIG")]
    assert sorted(keys) == [f"layer{i}.dcls_shared.conv2.P" for i in range(1, 5)]
    for stage, width in STAGE_WIDTHS.items():
        shared = model.get_submodule(f"{stage}.dcls_shared.conv2").P
        assert shared.shape == (2, width, width, 5)
        for block in range(BLOCKS[stage]):
            assert model.get_submodule(f"{stage}.{block}.conv2").P is shared


def test_multiply_adds_match_paper():
    # resnet50 itself first, as a check of the counting: timm and the paper give 4.1G.
    assert multiply_adds(timm.create_model("resnet50"), 224) / 1e9 == pytest.approx(4.1, abs=0.05)
    for name in ("resnet50_dcls", "resnet50_dcls_k6"):
        assert multiply_adds(timm.create_model(name), 224) / 1e9 == pytest.approx(12.3, abs=0.1)


@pytest.mark.slow
def test_real_forward_at_224_counts_the_same(model: ResNetDcls):
    # The meta-device count above is exact only if the real forward runs the same convolutions
    # (with positions over the whole window, as trained: fresh ones let the layers skip taps).
    model = copy.deepcopy(model)
    dcls_zoo.positions.spread_model_positions_(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert counted_multiply_adds(counter) / 1e9 == pytest.approx(12.3, abs=0.1)


def test_safetensors_round_trip(model: ResNetDcls, tmp_path):
    path = tmp_path / "resnet50_dcls.safetensors"
    # no tensor appears twice in the state dict, so save_file (which refuses shared memory) works
    safetensors.torch.save_file(model.state_dict(), str(path))
    torch.manual_seed(1)
    other = timm.create_model("resnet50_dcls").eval()
    other.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
    # loading copies in place: the blocks still share their stage's positions
    assert other.layer3[5].conv2.P is other.layer3.dcls_shared.conv2.P
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))


def test_features_only(monkeypatch):
    model = timm.create_model("resnet50_dcls", features_only=True).eval()
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    # the feature wrapper keeps the shared positions (trainable, saved) ...
    names = {name for name, _ in model.named_parameters()}
    assert {f"layer{i}.dcls_shared.conv2.P" for i in range(1, 5)} <= names
    # ... and keeps each stage whole, so its footprints are built once per forward (with
    # autograd: without it every layer reuses its own cached kernel instead)
    calls = []
    original = dcls_zoo.shared.axis_footprints
    monkeypatch.setattr(dcls_zoo.shared, "axis_footprints", lambda *a, **k: calls.append(1) or original(*a, **k))
    features = model(torch.randn(2, 3, 64, 64))
    assert len(calls) == 4
    assert [f.shape for f in features] == [
        (2, 64, 32, 32), (2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4), (2, 2048, 2, 2)
    ]


def test_training_step_gives_finite_gradients_everywhere():
    torch.manual_seed(0)
    # timm's zero_init_last zeroes each block's last BatchNorm, which makes every gradient inside
    # the residual branches (DCLS weights and positions included) exactly zero on the first
    # step; switch it off to see the positions' gradients at once.
    model = timm.create_model("resnet50_dcls", num_classes=10, zero_init_last=False).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    out = model(x)
    assert out.shape == (2, 10) and model.fc.out_features == 10  # timm's num_classes kwarg
    loss = nn.functional.cross_entropy(out, target)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    for i in range(1, 5):
        assert model.get_submodule(f"layer{i}.dcls_shared.conv2").P.grad.abs().sum() > 0
    before = model.layer2.dcls_shared.conv2.P.detach().clone()
    optimizer.step()
    clamp_model_positions_(model)
    after = model.layer2.dcls_shared.conv2.P
    assert not torch.equal(before, after)
    low, high = position_bounds(7)
    assert after.min() >= low and after.max() <= high


def test_dcls_weights_get_fan_out_kaiming_init(model: ResNetDcls):
    # std sqrt(2 / fan_out), fan_out = C_out * K: 64 * 5 = 320 in layer1 (60k samples per stage)
    weight = model.layer1[0].conv2.weight
    expected = math.sqrt(2 / (64 * 5))
    assert weight.std().item() == pytest.approx(expected, rel=0.1)
    assert math.isclose(model.layer4[0].conv2.weight.std().item(), math.sqrt(2 / (512 * 5)), rel_tol=0.05)
