"""Shared positions live in the module tree: every transform of a model keeps them as parameters.

A stage's :class:`~dcls_zoo.shared.SharedPositions` is registered canonically on the stage
(``stages.0.dcls_shared.conv_dw``) and as the submodule ``shared_positions`` of each layer that
uses it. These tests check what that buys (timm's FX feature extraction, ``features_only``, deep
copies, ``torch.compile`` keep the positions as parameters, and they get gradients) and what it
must not change (the state dict holds each shared tensor once, under the canonical key, and
loads strictly; names and order of ``named_parameters`` are the canonical ones).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torch import nn

import dcls_zoo
from dcls_zoo import Dcls2d
from dcls_zoo.shared import SharedPositions, register_shared_positions

feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")

# A small ConvNeXt-dcls with Gaussian positions (P and SIG shared per stage).
TINY_GAUSS = dict(depths=(1, 2, 2, 1), dims=(8, 16, 24, 32), num_classes=5)


def _fx_model(model: nn.Module) -> nn.Module:
    """What timm's model tests build (``_create_fx_model(model, train=True)`` in its
    ``tests/test_models.py``): a torchvision feature extractor over the model's last graph node,
    traced with timm's leaf modules (the DCLS layers among them) and leaf functions."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = feature_extraction.get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return feature_extraction.create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs
    )


def _check_fx_backward(name: str, size: int, **kwargs) -> None:
    """timm's ``test_model_backward_fx``: one backward through the GraphModule reaches every
    parameter, as many as the model has."""
    torch.manual_seed(0)
    model = dcls_zoo.create_model(name, num_classes=42, **kwargs).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _fx_model(model)
    # the GraphModule holds the model's very parameters, positions included
    assert {id(p) for p in fx_model.parameters()} == {id(p) for p in model.parameters()}
    outputs = torch.cat(tuple(fx_model(torch.randn(2, 3, size, size)).values()))
    outputs.mean().backward()
    for parameter_name, parameter in fx_model.named_parameters():
        assert parameter.grad is not None, f"no gradient for {parameter_name}"
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


def test_fx_feature_extraction_keeps_and_trains_the_positions():
    _check_fx_backward("convnext_dcls_atto", 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", dcls_zoo.list_models())
def test_fx_backward_of_every_registered_model(name):
    _check_fx_backward(name, 64)


def _stage_groups(model: nn.Module) -> list[SharedPositions]:
    return [m for m in model.modules() if isinstance(m, SharedPositions)]


@pytest.mark.parametrize("feature_cls", ["hook", "fx"])
@pytest.mark.parametrize("name, kwargs", [
    ("convnext_dcls_atto", {}),  # feature_cfg flatten_sequential=True
    # flatten_sequential=False; timm's zero_init_last would zero every gradient inside the blocks
    ("resnet50_dcls", dict(layers=(1, 1, 1, 1), zero_init_last=False)),
])
def test_features_only_keeps_and_trains_the_positions(name, feature_cls, kwargs):
    torch.manual_seed(0)
    features = dcls_zoo.create_model(name, features_only=True, feature_cls=feature_cls, **kwargs)
    groups = _stage_groups(features)
    assert len(groups) == 4  # one per stage, each met once
    parameters = {id(p) for p in features.parameters()}
    assert all(id(group.P) in parameters for group in groups)
    sum(f.mean() for f in features(torch.randn(2, 3, 32, 32))).backward()
    assert all(p.grad is not None for p in features.parameters())
    assert all(group.P.grad.abs().sum() > 0 for group in groups)


def test_named_parameters_and_state_dict_name_the_positions_canonically_and_once():
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_gauss_tiny", **TINY_GAUSS)
    state = model.state_dict()
    # ConvNeXt has no buffers: named_parameters lists exactly the state dict, in its order
    assert [name for name, _ in model.named_parameters()] == list(state)
    positions = [key for key in state if key.endswith((".P", ".SIG"))]
    assert positions == [f"stages.{i}.dcls_shared.conv_dw.{name}" for i in range(4) for name in ("P", "SIG")]
    assert not any(".shared_positions" in key for key in state._metadata)
    # the rest is timm's ConvNeXt of the same shape, key for key
    plain = timm.models.convnext.ConvNeXt(**TINY_GAUSS)
    assert [key for key in state if key not in positions] == list(plain.state_dict())
    # every layer holds its stage's group; parameters() counts each tensor once
    for stage in model.stages:
        assert all(block.conv_dw.shared_positions is stage.dcls_shared.conv_dw for block in stage.blocks)
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in state.values())
    holders = dcls_zoo.position_owners(model)
    assert [h.path for h in holders] == [f"stages.{i}.dcls_shared.conv_dw" for i in range(4)]


def test_state_dict_round_trips_strictly_and_a_missing_canonical_key_fails():
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_gauss_tiny", **TINY_GAUSS)
    torch.manual_seed(1)
    other = dcls_zoo.create_model("convnext_dcls_gauss_tiny", **TINY_GAUSS)
    assert not torch.equal(other.stages[1].dcls_shared.conv_dw.P, model.stages[1].dcls_shared.conv_dw.P)
    assert not other.load_state_dict(model.state_dict(), strict=True).missing_keys
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert other.stages[1].blocks[1].conv_dw.P is other.stages[1].dcls_shared.conv_dw.P

    state = model.state_dict()
    del state["stages.2.dcls_shared.conv_dw.SIG"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "stages\.2\.dcls_shared\.conv_dw\.SIG"\.'):
        other.load_state_dict(state)
    result = other.load_state_dict(state, strict=False)
    assert result.missing_keys == ["stages.2.dcls_shared.conv_dw.SIG"] and not result.unexpected_keys


def test_graph_module_state_dict_holds_each_shared_tensor_once_and_reloads():
    torch.manual_seed(0)
    fx_model = _fx_model(dcls_zoo.create_model("convnext_dcls_gauss_tiny", **TINY_GAUSS).eval())
    state = fx_model.state_dict()
    groups = _stage_groups(fx_model)
    assert len(groups) == 4
    for group in groups:
        for tensor in (group.P, group.SIG):
            assert sum(value.data_ptr() == tensor.data_ptr() for value in state.values()) == 1
    # with no stage in the GraphModule, each group is stored under the first layer that uses it
    assert [key for key in state if key.endswith(".P")] == [
        f"stages.{i}.blocks.0.conv_dw.shared_positions.P" for i in range(4)
    ]

    torch.manual_seed(1)
    other = _fx_model(dcls_zoo.create_model("convnext_dcls_gauss_tiny", **TINY_GAUSS).eval())
    other.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), fx_model(x))

    del state["stages.3.blocks.0.conv_dw.shared_positions.P"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"stages\.3\.blocks\.0\.conv_dw\.shared_positions\.P\"\."):
        other.load_state_dict(state)


def test_deepcopy_shares_within_the_copy_with_the_same_names_and_order():
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3)
    twin = copy.deepcopy(model)
    for stage, twin_stage in zip(model.stages, twin.stages):
        group, twin_group = stage.dcls_shared.conv_dw, twin_stage.dcls_shared.conv_dw
        assert twin_group is not group and twin_group.P is not group.P
        assert all(block.conv_dw.shared_positions is twin_group for block in twin_stage.blocks)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert list(twin.state_dict()) == list(model.state_dict())
    # parameters() pairs up tensor for tensor, as AveragedModel (EMA) zips them
    ema = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        model.stages[1].dcls_shared.conv_dw.P.add_(1.0)
    ema.update_parameters(model)  # the first update copies
    torch.testing.assert_close(ema.module.stages[1].blocks[1].conv_dw.P, model.stages[1].dcls_shared.conv_dw.P)


def test_a_layer_copied_on_its_own_takes_its_group_along():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3)
    layer = model.stages[0].blocks[1].conv_dw
    alone = copy.deepcopy(layer)
    assert alone.shared_positions is not layer.shared_positions
    torch.testing.assert_close(alone.P, layer.P)
    assert list(alone.state_dict()) == ["weight", "bias", "shared_positions.P"]
    assert [n for n, _ in alone.named_parameters()] == ["weight", "bias", "shared_positions.P"]


def test_conversions_visit_the_group_harmlessly_and_keep_the_sharing():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3)
    visits = []
    model.apply(lambda module: visits.append(module) if isinstance(module, SharedPositions) else None)
    assert len(visits) == 4 + 12  # nn.Module.apply visits each registration: harmless
    model.to(torch.float64)
    for stage in model.stages:
        group = stage.dcls_shared.conv_dw
        assert group.P.dtype == torch.float64
        assert all(block.conv_dw.P is group.P for block in stage.blocks)
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_compiled_model_and_layer_hold_the_positions():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3)
    compiled = torch.compile(model)
    assert {id(p) for p in dcls_zoo.position_parameters(model)} <= {id(p) for p in compiled.parameters()}

    group = SharedPositions((4, 1, 3), (7, 7), "bilinear")
    blocks = nn.Sequential(*(Dcls2d(4, 4, 3, 7, padding=3, groups=4, version="bilinear", shared_positions=group)
                             for _ in range(2)))
    register_shared_positions(blocks, "conv", group)
    compiled = torch.compile(blocks, backend="eager")
    assert [n for n, _ in compiled.named_parameters()] == [
        "_orig_mod.0.weight", "_orig_mod.0.bias", "_orig_mod.1.weight", "_orig_mod.1.bias",
        "_orig_mod.dcls_shared.conv.P",
    ]
    compiled(torch.randn(1, 4, 9, 9)).sum().backward()
    assert group.P.grad is not None and group.P.grad.abs().sum() > 0


def test_fuse_and_reparameterize_drop_every_registration():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3).eval()
    for fused in (dcls_zoo.fuse(model), timm.utils.reparameterize_model(model)):
        assert not _stage_groups(fused) and not dcls_zoo.position_parameters(fused)
        assert not any("dcls_shared" in key or "shared_positions" in key for key in fused.state_dict())


def test_pickle_round_trip_keeps_the_canonical_names():
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=3)
    loaded = pickle.loads(pickle.dumps(model))
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(block.conv_dw.P is loaded.stages[2].dcls_shared.conv_dw.P for block in loaded.stages[2].blocks)


def test_layers_pickled_with_the_group_outside_the_tree_still_load():
    """Before the group was a submodule a layer kept it in ``__dict__['_shared_positions']``."""
    group = SharedPositions((4, 1, 3), (7, 7), "gauss")
    layer = Dcls2d(4, 4, 3, 7, padding=3, groups=4, shared_positions=group)
    state = dict(layer.__dict__, _modules={}, _shared_positions=group)
    old = Dcls2d.__new__(Dcls2d)
    old.__setstate__(state)
    assert old.shared_positions is group and old.P is group.P and old.SIG is group.SIG
    assert [n for n, _ in old.named_parameters()] == ["weight", "bias", "shared_positions.P", "shared_positions.SIG"]
