"""Models, layers and groups take ``device``/``dtype``; every model builds on the meta device, and
``to_empty`` + ``init_weights()`` gives the model a fresh build would (same shapes, same
initial distributions, positions inside their windows)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import dcls_zoo
from dcls_zoo import Dcls2d, dclsify
from dcls_zoo.construct import position_bounds
from dcls_zoo.shared import SharedPositions

FAST = [
    ("convnext_dcls_atto", {}),
    ("convnext_dcls_atto", dict(stem="small", dcls_position_init="uniform", drop_path_rate=0.1)),
    ("resnet50_dcls", {}),
]
# timm's stochastic-depth schedule is computed with torch on the CPU (a few floats per block);
# nothing else may produce a real tensor during a meta build.
_SCHEDULE_OPS = {"aten.linspace.default", "aten.split_with_sizes.default"}


class _RealTensors(TorchDispatchMode):
    """Records every op that produces a tensor off the meta device: ``(op, shape)``."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                self.made.append((str(func), tuple(value.shape)))
        return out


def _meta_build(name: str, kwargs: dict, context: bool) -> nn.Module:
    spy = _RealTensors()
    with spy:
        if context:
            with torch.device("meta"):
                model = timm.create_model(name, **kwargs)
        else:
            model = timm.create_model(name, device="meta", **kwargs)
    assert [made for made in spy.made if made[0] not in _SCHEDULE_OPS] == []
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}
    return model


def _statistics(tensor: torch.Tensor) -> tuple[float, float]:
    values = tensor.double()
    return values.mean().item(), values.std().item() if tensor.numel() > 1 else 0.0


def _check_meta_init(name: str, kwargs: dict, context: bool = False) -> None:
    torch.manual_seed(0)
    fresh = timm.create_model(name, **kwargs)
    model = _meta_build(name, kwargs, context)
    model.to_empty(device="cpu")
    with torch.no_grad():  # what to_empty leaves is undefined: make anything left over show
        for tensor in model.state_dict().values():
            tensor.fill_(math.nan if tensor.is_floating_point() else -7)
    torch.manual_seed(1)
    model.init_weights()

    expected, state = fresh.state_dict(), model.state_dict()
    assert list(state) == list(expected)
    for key, reference in expected.items():
        value = state[key]
        assert value.shape == reference.shape and value.dtype == reference.dtype, key
        if not reference.is_floating_point():
            assert torch.equal(value, reference), key  # e.g. BatchNorm's num_batches_tracked
            continue
        assert torch.isfinite(value).all(), key
        mean, std = _statistics(reference)
        if std == 0:
            assert torch.equal(value, reference), key  # constants: ones, zeros, layer scale, widths
        elif reference.numel() >= 256:  # random draws: the same distribution
            got_mean, got_std = _statistics(value)
            assert abs(got_mean - mean) <= 0.25 * std and abs(got_std - std) <= 0.25 * std, (key, got_mean, got_std, mean, std)
    for holder in dcls_zoo.position_owners(model):
        for axis, window in enumerate(holder.owner.learned_kernel_size):
            low, high = position_bounds(window)
            assert low <= holder.owner.P[axis].min() and holder.owner.P[axis].max() <= high
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("name, kwargs", FAST)
def test_meta_build_then_to_empty_and_init_weights_matches_a_fresh_build(name, kwargs):
    _check_meta_init(name, kwargs)


def test_meta_build_under_the_device_context():
    _check_meta_init("convnext_dcls_gauss_tiny", dict(depths=(1, 1, 2, 1)), context=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", dcls_zoo.list_models())
def test_every_registered_model_builds_on_meta_and_initialises(name):
    _check_meta_init(name, {})


def test_uniform_position_init_covers_the_window_again():
    model = timm.create_model("convnext_dcls_atto", device="meta", dcls_position_init="uniform")
    model.to_empty(device="cpu")
    model.init_weights()
    positions = model.stages[0].dcls_shared.conv_dw.P.detach()
    low, high = position_bounds(17)
    # uniform over [-8, 8]: standard deviation 16 / sqrt(12) ~ 4.6 (the normal init's is 0.5)
    assert positions.std().item() == pytest.approx((high - low) / math.sqrt(12), rel=0.1)


def test_init_weights_starts_a_trained_model_over():
    torch.manual_seed(0)
    model = dcls_zoo.create_model("resnet50_dcls", layers=(1, 1, 1, 1), num_classes=4)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(3)
    model.init_weights()
    assert torch.equal(model.layer1[0].bn3.weight, torch.zeros(256))  # zero_init_last, as built
    assert torch.equal(model.bn1.running_var, torch.ones(64))
    assert model.layer2.dcls_shared.conv2.P.abs().max() <= 3  # N(0, 0.5) clamped, not shifted by 3


def test_dtype_reaches_every_parameter():
    model = timm.create_model("convnext_dcls_atto", dtype=torch.float64, stem="small", num_classes=3)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    resnet = timm.create_model("resnet50_dcls", dtype=torch.float64, layers=(1, 1, 1, 1))
    assert {t.dtype for t in resnet.state_dict().values() if t.is_floating_point()} == {torch.float64}


def test_dclsify_layers_and_groups_follow_the_device_and_dtype():
    plain = timm.create_model("convnext_atto", device="meta", dtype=torch.float16)
    dclsify(plain, 17)
    assert {(p.device.type, p.dtype) for p in plain.parameters()} == {("meta", torch.float16)}
    group = SharedPositions((4, 1, 3), (9, 9), "gauss", device="meta", dtype=torch.bfloat16)
    layer = Dcls2d(4, 4, 3, 9, padding=4, groups=4, shared_positions=group, device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in layer.parameters()} == {("meta", torch.bfloat16)}
    assert layer.P is group.P
