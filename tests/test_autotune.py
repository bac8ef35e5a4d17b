"""Measured path choices on the CPU: every variant is the same convolution, and the fastest wins.

The variants of each pass of the CPU depthwise backend (the kernel grown by zero taps; oneDNN's
own weight gradient instead of the batch-folded one) are checked against PyTorch's plain
convolution by forcing each one in turn; the chooser is checked with candidates whose costs are
known (one sleeps), not by timing real convolutions, so the tests cannot depend on the machine.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import pytest
import torch

from dcls_zoo import Dcls2d, autotune, backends, use_backend

PASSES = ("forward", "input_gradient", "weight_gradient")


@pytest.fixture(autouse=True)
def fresh_choices():
    """Nothing remembered from other tests."""
    autotune.clear()
    yield
    autotune.clear()


@pytest.fixture
def measuring():
    """Measured choices on (they are off by default)."""
    with autotune.use_autotune(True):
        yield


def _forcing(monkeypatch, wanted: dict[str, str]) -> list[str]:
    """Make every choice whose pass is in ``wanted`` return that variant; returns the passes asked
    (with measuring on: off, the backend asks nothing and takes the default paths)."""
    asked = []

    def choose(key, candidates, default, macs):
        asked.append(key[0])
        name = wanted.get(key[0], default)
        assert name in candidates, (key[0], name, list(candidates))
        return name

    monkeypatch.setattr(autotune, "choose", choose)
    return asked


def _run(layer: Dcls2d, x: torch.Tensor, backend: str):
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with use_backend(backend):
        y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]


VARIANTS = [
    {"forward": "2", "input_gradient": "1"},
    {"forward": "1", "input_gradient": "2", "weight_gradient": "onednn"},
    {"weight_gradient": "onednn", "weight_gradient onednn": "2"},
    {"weight_gradient folded": "1"},
]
GEOMETRIES = [  # window, spatial, stride, padding, padding mode
    (7, 12, 1, "same", "zeros"),
    ((7, 4), 10, 1, "same", "zeros"),  # even window: asymmetric padding, padded explicitly
    (5, 11, 2, 2, "zeros"),
    (5, 9, 1, 2, "reflect"),
]


@pytest.mark.parametrize("wanted", VARIANTS, ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()))
@pytest.mark.parametrize("window,spatial,stride,padding,mode", GEOMETRIES)
def test_every_variant_is_the_plain_convolution(monkeypatch, measuring, wanted, window, spatial, stride, padding, mode):
    torch.manual_seed(0)
    layer = Dcls2d(4, 4, 5, window, stride=stride, padding=padding, groups=4, padding_mode=mode, version="gauss")
    x = torch.randn(3, 4, spatial, spatial).contiguous(memory_format=torch.channels_last)
    expected = _run(layer, x, "native")
    asked = _forcing(monkeypatch, wanted)
    actual = _run(layer, x, "cpu_depthwise")
    assert {pass_name.split()[0] for pass_name in asked} == set(PASSES)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_with_measuring_off_the_backend_asks_for_no_choice(monkeypatch):
    asked = _forcing(monkeypatch, {})
    layer = Dcls2d(4, 4, 5, 7, padding=3, groups=4)
    _run(layer, torch.randn(2, 4, 12, 12), "cpu_depthwise")
    assert asked == []


def test_onednn_weight_gradient_is_not_timed_for_large_windows(monkeypatch, measuring):
    offered = {}

    def choose(key, candidates, default, macs):
        offered[key[0]] = list(candidates)
        return default

    monkeypatch.setattr(autotune, "choose", choose)
    for window in (7, 9):
        layer = Dcls2d(4, 4, 2, window, padding=window // 2, groups=4, version="bilinear")
        with torch.no_grad():  # an element in two opposite corners: the whole window is convolved
            layer.P[..., 0] = -(window // 2)
            layer.P[..., 1] = window // 2
        _run(layer, torch.randn(2, 4, 12, 12), "cpu_depthwise")
        assert offered["forward"] and layer._kernel_and_padding()[0].shape[2:] == (window, window)
        assert ("onednn" in offered["weight_gradient"]) == (window <= 7), window


def test_forced_variants_pass_gradcheck(monkeypatch, measuring):
    _forcing(monkeypatch, {"forward": "1", "input_gradient": "2", "weight_gradient": "onednn",
                           "weight_gradient onednn": "1"})
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def run(x, kernel):
        return backends.convolve(x, kernel, None, (1, 1), ((1, 1), (1, 1)), 3, "zeros", "cpu_depthwise")

    assert torch.autograd.gradcheck(run, (x, kernel))


def _candidates(calls: list[str], slow_seconds: float = 0.03):
    def slow():
        calls.append("slow")
        time.sleep(slow_seconds)

    def fast():
        calls.append("fast")

    return {"slow": slow, "fast": fast}


def test_the_fastest_candidate_is_chosen_once_per_key(measuring):
    calls: list[str] = []
    assert autotune.choose("key", _candidates(calls), default="slow", macs=autotune.MIN_MACS) == "fast"
    measured = len(calls)
    assert calls.count("slow") >= 1 and calls.count("fast") >= 1  # both were timed
    assert autotune.choose("key", _candidates(calls), default="slow", macs=autotune.MIN_MACS) == "fast"
    assert len(calls) == measured  # remembered: nothing ran again
    with autotune.use_autotune(False):  # switched off, the default path runs again
        assert autotune.choose("key", _candidates(calls), default="slow", macs=autotune.MIN_MACS) == "slow"
    assert len(calls) == measured
    (record,) = autotune.measurements()
    assert record.key == "key" and record.default == "slow" and record.chosen == "fast"
    assert record.seconds["slow"] >= 0.03 > record.seconds["fast"]


def test_the_default_stays_unless_another_is_clearly_faster(measuring):
    calls: list[str] = []
    candidates = {"a": lambda: time.sleep(0.005), "b": lambda: time.sleep(0.005)}  # equally fast
    assert autotune.choose("tie", candidates, default="a", macs=autotune.MIN_MACS) == "a"
    assert autotune.choose("tie, other default", candidates, default="b", macs=autotune.MIN_MACS) == "b"
    assert autotune.choose("tie", _candidates(calls), default="fast", macs=autotune.MIN_MACS) == "a"  # remembered


@pytest.mark.parametrize("reason", ["small", "disabled", "deterministic"])
def test_nothing_is_measured_when_it_must_not_be(reason):
    calls: list[str] = []
    macs = autotune.MIN_MACS - 1 if reason == "small" else autotune.MIN_MACS
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if reason == "deterministic":
            torch.use_deterministic_algorithms(True)
        with autotune.use_autotune(reason != "disabled"):
            assert autotune.choose("key", _candidates(calls), default="slow", macs=macs) == "slow"
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert calls == [] and autotune.measurements() == []


def test_a_real_layer_measures_each_pass_once_and_keeps_its_results(monkeypatch, measuring):
    monkeypatch.setattr(autotune, "MIN_MACS", 0)  # measure this small layer as if it were large
    torch.manual_seed(0)
    layer = Dcls2d(8, 8, 10, 11, padding=5, groups=8, version="bilinear")
    x = torch.randn(2, 8, 24, 24).contiguous(memory_format=torch.channels_last)
    with autotune.use_autotune(False):
        expected = _run(layer, x, "cpu_depthwise")
    first = _run(layer, x, "cpu_depthwise")
    passes = [m.key[0] for m in autotune.measurements()]
    assert sorted(p.split()[0] for p in passes) == sorted(PASSES + ("weight_gradient",))
    second = _run(layer, x, "cpu_depthwise")
    assert [m.key[0] for m in autotune.measurements()] == passes  # nothing measured again
    for a, b, want in zip(first, second, expected):  # whichever variants won: the same numbers
        torch.testing.assert_close(a, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_off_by_default_and_on_with_lightnings_benchmark_switch():
    benchmark = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        assert not autotune.autotune_enabled()
        pl.Trainer(accelerator="cpu", benchmark=True, logger=False, enable_checkpointing=False)
        assert torch.backends.cudnn.benchmark and autotune.autotune_enabled()
        autotune.set_autotune(False)  # an explicit choice overrides the switch
        assert not autotune.autotune_enabled()
        with autotune.use_autotune(True):  # and a block overrides that
            assert autotune.autotune_enabled()
        with pytest.raises(TypeError, match="True, False or None"):
            autotune.set_autotune("yes")
        with pytest.raises(TypeError, match="use_autotune expects True or False, got 'no'"):
            with autotune.use_autotune("no"):
                pass
    finally:
        autotune.set_autotune(None)
        torch.backends.cudnn.benchmark = benchmark

