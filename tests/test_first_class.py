"""DCLS models as first-class citizens of timm and PyTorch: TorchScript, torch.fx (plain and
timm's feature extraction), timm's reparameterisation, ONNX, timm's schedulers; the functional
op; the positions service and the direction of imports."""

from __future__ import annotations

import ast
import pathlib
import warnings

import pytest
import timm
import timm.scheduler
import timm.utils
import torch
import torch.nn.functional as F
from timm.layers import create_feature_extractor, get_graph_node_names
from torch import nn

import dcls_zoo
import dcls_zoo.weights.official
from dcls_zoo import Dcls1d, Dcls2d, Dcls3d, dcls_conv, fuse
from lightning_modules.optim import WarmupCosine, parameter_groups, upgrade_scheduler_state, warmup_cosine_scheduler

PACKAGE = pathlib.Path(dcls_zoo.__file__).parent
SMALL = ["convnext_dcls_atto", "convnext_dcls_gauss_tiny", "convnext_k7_atto", "resnet50_dcls"]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = dcls_zoo.create_model(name, num_classes=7).eval()
    dcls_zoo.positions.spread_model_positions_(model)  # positions all over the window, as trained
    return model


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.10+
        return torch.jit.script(model)


def _check_script_and_fx(name: str) -> None:
    model = _model(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(_script(model)(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected, rtol=1e-5, atol=1e-5)
        # timm's own FX path (its feature extraction and model tests): DCLS layers are leaves
        _, eval_nodes = get_graph_node_names(model)
        extractor = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
        torch.testing.assert_close(extractor(x)[eval_nodes[-1]], expected, rtol=1e-5, atol=1e-5)
    # the eager model still works as before, and trains (the scripted copy shares its parameters)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in dcls_zoo.position_parameters(model))


@pytest.mark.parametrize("name", SMALL)
def test_registered_models_script_and_trace(name):
    _check_script_and_fx(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(dcls_zoo.list_models()) - set(SMALL)))
def test_every_other_registered_model_scripts_and_traces(name):
    _check_script_and_fx(name)


def test_fx_features_only_and_script_of_layers():
    model = timm.create_model("convnext_dcls_atto", features_only=True, feature_cls="fx").eval()
    features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [40, 80, 160, 320]
    for layer, x in ((Dcls1d(3, 6, 4, 9, padding=4), torch.randn(2, 3, 20)),
                     (Dcls3d(2, 2, 3, (5, 3, 3), padding="same", groups=2, version="triangle"), torch.randn(1, 2, 6, 6, 6))):
        torch.testing.assert_close(_script(layer)(x), layer(x))
        torch.testing.assert_close(torch.fx.symbolic_trace(layer)(x), layer(x))


def test_fx_graph_records_one_dcls_conv_per_layer():
    model = _model("convnext_dcls_atto")
    graph = torch.fx.symbolic_trace(model).graph
    calls = [node for node in graph.nodes if node.op == "call_function" and node.target is dcls_conv]
    assert len(calls) == len(dcls_zoo.dcls_layers(model))


def test_timm_reparameterize_model_fuses_dcls():
    model = _model("convnext_dcls_atto")
    x = torch.randn(2, 3, 64, 64)
    fused = timm.utils.reparameterize_model(model)
    assert not dcls_zoo.dcls_layers(fused) and not dcls_zoo.position_parameters(fused)
    assert all(type(m.conv_dw) is nn.Conv2d for stage in fused.stages for m in stage.blocks)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused(x), fuse(model)(x), rtol=1e-6, atol=1e-6)


def test_resnet_reparameterize_keeps_the_stage_sequence_working():
    model = _model("resnet50_dcls")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm.utils.reparameterize_model(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_of_an_unfused_model(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    layer = Dcls2d(4, 4, 5, 9, padding="same", groups=4, version="bilinear").eval()
    dcls_zoo.positions.spread_model_positions_(layer)
    x = torch.randn(1, 4, 12, 12)
    path = tmp_path / "dcls.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), str(path))  # dynamo=True, the default: through the dense kernel
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), layer(x), rtol=1e-5, atol=1e-5)
    # the TorchScript-based exporter cannot trace the Python kernel construction: say what works
    with pytest.raises(RuntimeError, match=r"dcls_zoo\.fuse"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), str(tmp_path / "legacy.onnx"), dynamo=False)


def test_convert_official_checkpoint_at_top_level():

    assert dcls_zoo.convert_official_checkpoint is dcls_zoo.weights.official.convert_official_checkpoint
    assert "convert_official_checkpoint" in dcls_zoo.__all__


# ----------------------------------------------------------------------------- learning rates


def test_timm_scheduler_trains_positions_at_five_times_the_rate():
    """timm's schedulers multiply each group's rate by its lr_scale: positions get 5x, not 25x."""
    model = _model("convnext_dcls_atto")
    optimizer = torch.optim.AdamW(parameter_groups(model, position_lr_scale=5.0), lr=1e-3, weight_decay=0.05)
    plain = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)  # the same schedule, one unscaled group
    settings = dict(t_initial=100, warmup_t=10, warmup_lr_init=1e-5, t_in_epochs=False)  # stepped per update
    scheduler = timm.scheduler.CosineLRScheduler(optimizer, **settings)
    reference = timm.scheduler.CosineLRScheduler(plain, **settings)
    for step in range(0, 100, 7):
        scheduler.step_update(step)
        reference.step_update(step)
        rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
        base = plain.param_groups[0]["lr"]
        assert rates["decay"] == pytest.approx(base, rel=1e-12)
        assert rates["no_decay"] == pytest.approx(base, rel=1e-12)
        assert rates["positions"] == pytest.approx(5.0 * base, rel=1e-12)


def test_recipe_scheduler_trains_positions_at_five_times_the_rate():
    model = _model("convnext_dcls_atto")
    optimizer = torch.optim.AdamW(parameter_groups(model, position_lr_scale=5.0), lr=1e-3)
    scheduler = warmup_cosine_scheduler(optimizer, WarmupCosine(warmup_steps=5, total_steps=50))
    peak = []
    for _ in range(50):
        rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
        assert rates["positions"] == pytest.approx(5.0 * rates["decay"], rel=1e-12)
        peak.append(rates["positions"])
        optimizer.step()
        scheduler.step()
    assert max(peak) == pytest.approx(5e-3, rel=1e-3)


@pytest.mark.parametrize("upgrade", [False, True])
def test_resuming_a_scheduler_saved_before_lr_scale_keeps_five_times(upgrade):
    """Earlier runs stored the 5x in the groups' lr (and so in LambdaLR's base rates)."""
    model = _model("convnext_dcls_atto")

    def optimizer_and_scheduler():
        optimizer = torch.optim.AdamW(parameter_groups(model, position_lr_scale=5.0), lr=1e-3)
        return optimizer, warmup_cosine_scheduler(optimizer, WarmupCosine(warmup_steps=0, total_steps=100))

    optimizer, scheduler = optimizer_and_scheduler()
    old = scheduler.state_dict()  # made into what those runs saved: scaled base rates, no lr_scale
    old["base_lrs"] = [lr * group["lr_scale"] for lr, group in zip(old["base_lrs"], optimizer.param_groups)]
    for factor in old["lr_lambdas"]:
        del factor["lr_scale"]
    optimizer, scheduler = optimizer_and_scheduler()
    scheduler.load_state_dict(upgrade_scheduler_state(old) if upgrade else old)
    optimizer.step()
    scheduler.step()
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates["positions"] / rates["decay"] == pytest.approx(5.0 if upgrade else 25.0)


def test_position_group_is_found_by_identity_not_by_name():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = Dcls2d(2, 2, 3, 5, padding=2, groups=2, version="gauss")
            self.P = nn.Parameter(torch.zeros(3))  # named like a position, but a plain parameter

    model = Custom()
    groups = {group["name"]: group["params"] for group in parameter_groups(model)}
    assert {id(p) for p in groups["positions"]} == {id(model.conv.P), id(model.conv.SIG)}
    assert any(p is model.P for p in groups["no_decay"])


# ----------------------------------------------------------------------------- the functional op


@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
def test_functional_op_is_the_layer_forward(version):
    torch.manual_seed(0)
    layer = Dcls2d(4, 8, 5, (9, 7), stride=2, padding=3, groups=2, padding_mode="reflect", version=version)
    x = torch.randn(2, 4, 13, 11)
    y = dcls_conv(x, layer.weight, layer.P, layer.SIG, (9, 7), layer.bias, stride=2, padding=3, groups=2,
                  padding_mode="reflect", version=version)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    flat = [3, 3, 3, 3]
    expected = F.conv2d(F.pad(x, flat, mode="reflect"), layer.kernel(), layer.bias, 2, 0, 1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,error,fragment", [
    (dict(padding_mode="mirror"), ValueError, "padding_mode must be one of"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding="half"), ValueError, "padding must be an int, a tuple, 'same' or 'valid'"),
    (dict(learned_axes=(0, 2)), ValueError, "learned_axes must be distinct kernel axes in [0, 2)"),
    (dict(version="cubic"), ValueError, "unknown version 'cubic'"),
    (dict(backend="triton"), ValueError, "unknown backend 'triton'"),
    (dict(groups=2.5), TypeError, "groups must be an int"),
])
def test_functional_op_names_the_bad_argument(kwargs, error, fragment):
    weight, P = torch.randn(4, 1, 3), torch.zeros(2, 4, 1, 3)
    with pytest.raises(error) as info:
        dcls_conv(torch.randn(1, 4, 8, 8), weight, P, None, 5, **{"groups": 4, "version": "bilinear", **kwargs})
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- rooms and imports


def _imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found += [(f"{module}.{alias.name}" if not node.module else module, id(node) in top_level)
                      for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
    return found


# The import graph as a whole (no cycle, no upward or hidden import): tests/test_import_graph.py.


def test_nothing_imports_the_private_positions_helpers_of_the_zoo():
    roots = [PACKAGE, PACKAGE.parent / "lightning_modules"]
    for path in (p for root in roots for p in root.rglob("*.py")):
        for module, _ in _imports(path):
            assert module != "dcls_zoo.models.dclsify" or path.parent.name == "models", \
                f"{path} takes positions from the model surgery room"
        assert "_role_in_stage" not in path.read_text(), path
        if path.name != "shared.py":
            assert '"dcls_shared"' not in path.read_text(), f"{path} spells the shared attribute out"


def test_positions_service_finds_every_holder_once():
    model = _model("convnext_dcls_atto")
    holders = dcls_zoo.position_owners(model)
    assert [h.path for h in holders] == [f"stages.{i}.dcls_shared.conv_dw" for i in range(4)]
    assert [len(h.layers) for h in holders] == [2, 2, 6, 2]
    assert [id(p) for p in dcls_zoo.position_parameters(model)] == [id(h.owner.P) for h in holders]
    assert isinstance(model.stages[0].blocks[0].conv_dw, dcls_zoo.DclsConvNd)
