"""``torch.compile`` of DCLS layers and models on the CPU: one graph, no recompilation while the
positions train, and the gradients of eager mode (positions and widths included)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dcls_zoo
from dcls_zoo import Dcls2d
from dcls_zoo.shared import SharedPositions


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _train(model: nn.Module, run: nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    """``steps`` AdamW steps of ``model`` through ``run`` (the model or its compiled form), with the
    positions clamped after each as in training; returns the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(run(x), labels)
        loss.backward()
        optimizer.step()
        dcls_zoo.clamp_model_positions_(model)
        losses.append(loss.item())
    return losses


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo reuses a graph compiled for another instance of the same module class: each test
    traces afresh."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled_training_matches_eager(eager: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> nn.Module:
    """Train ``eager`` and a copy compiled with fullgraph=True (any graph break fails) for three
    steps each, under error_on_recompile (any recompilation while the positions move and are
    clamped in place fails); assert they stay together and return the compiled copy.

    aot_eager runs the same ATen ops as eager through AOTAutograd's joint graph, so losses and
    parameters agree to float32 rounding."""
    compiled_model = copy.deepcopy(eager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager_losses = _train(eager, eager, x, labels, steps=3)
        compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled_losses = _train(compiled_model, compiled, x, labels, steps=3)
    # dcls_geometry's memo is stepped over while tracing: no "lru_cache-wrapped function" warning
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for (name, want), got in zip(eager.named_parameters(), compiled_model.parameters()):
        assert _relative(got, want) < 1e-5, name
    return compiled_model


class _TwoLayers(nn.Module):
    """Two depthwise DCLS layers sharing positions and widths (a ConvNeXt stage in small)."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.shared = SharedPositions((6, 1, 5), (9, 9), version)
        self.first, self.second = (Dcls2d(6, 6, 5, 9, padding="same", groups=6, version=version,
                                          shared_positions=self.shared) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(F.gelu(self.first(x)))


@pytest.mark.slow  # inductor generates and compiles C++ for forward and backward: ~30 s per case on 2 cores
@pytest.mark.parametrize("version", ["bilinear", "gauss"])
def test_inductor_gives_the_eager_gradients_of_positions_and_widths(version):
    torch.manual_seed(0)
    eager = _TwoLayers(version)
    dcls_zoo.positions.spread_model_positions_(eager)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)  # inductor
    x = torch.randn(2, 6, 12, 12)
    target = torch.randn(2, 6, 12, 12)
    results = []
    for model, run in ((eager, eager), (compiled_model, compiled)):
        xi = x.clone().requires_grad_()
        F.mse_loss(run(xi), target).backward()
        results.append({"input": xi.grad, **{name: p.grad for name, p in model.named_parameters()}})
    want, got = results
    assert "shared.P" in want and ("shared.SIG" in want) == (version == "gauss")
    # Inductor fuses the footprint construction and reorders its float32 sums: gradients agree
    # to a few ulps of their norm (rounding only; a wrong formula is off by O(1)).
    for name in want:
        assert _relative(got[name], want[name]) < 1e-5, name


class _Classifier(nn.Module):
    def __init__(self, version: str) -> None:
        super().__init__()
        self.layers, self.head = _TwoLayers(version), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x).mean((2, 3)))


@pytest.mark.parametrize("autotune", [False, True])
def test_layers_compile_to_one_graph_and_train_like_eager(autotune):
    """Measured CPU variant choices (autotune, on in configs/presets/cpu.yaml) used to break the
    graph at every depthwise layer (a thread-count read and a lock in the lookup)."""
    torch.manual_seed(0)
    model = _Classifier("gauss")
    dcls_zoo.positions.spread_model_positions_(model)
    with dcls_zoo.use_autotune(autotune):
        compiled = _compiled_training_matches_eager(model, torch.randn(2, 6, 12, 12), torch.tensor([0, 3]))
    assert compiled.layers.shared.P.grad is not None and compiled.layers.shared.SIG.grad is not None


@pytest.mark.slow  # dynamo traces timm's 12 blocks: ~40 s on 2 cores
def test_a_whole_model_compiles_to_one_graph_and_trains_like_eager():
    torch.manual_seed(0)
    model = dcls_zoo.create_model("convnext_dcls_atto", num_classes=4, dcls_version="gauss", dcls_kernel_count=8)
    dcls_zoo.positions.spread_model_positions_(model)
    with dcls_zoo.use_autotune(True):  # as configs/presets/cpu.yaml trains
        compiled = _compiled_training_matches_eager(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    positions = dcls_zoo.position_parameters(compiled)
    assert len(positions) == 8 and all(p.grad is not None for p in positions)  # P and SIG of 4 stages


def test_the_compiled_benchmark_counts_graphs_and_breaks(monkeypatch):
    """benchmarks/compiled.py reports each compilation's graphs and graph breaks: its counts are
    dynamo's, for a function with one break and one without."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from compiled import compile_first_call

    def broken(x: torch.Tensor) -> torch.Tensor:
        y = x + 1
        torch._dynamo.graph_break()
        return y * 2

    broken_compiled = torch.compile(broken, backend="eager")
    whole = torch.compile(lambda x: x * 2 + 1, backend="eager")
    first = compile_first_call(lambda: broken_compiled(torch.ones(2)))
    assert (first.graphs, first.breaks) == (2, 1) and first.seconds > 0
    first = compile_first_call(lambda: whole(torch.ones(2)))
    assert (first.graphs, first.breaks) == (1, 0)
