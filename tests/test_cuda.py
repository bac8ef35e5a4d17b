"""The CUDA side: every DCLS path against the CPU result, the implicit-GEMM backend, torch.compile,
bf16-mixed and DDP fits through the real command, the eval kernel cache and ``fuse``.

Every test here is marked ``cuda`` and skipped, for one stated reason, where no CUDA device is
visible: ``python -m pytest -m cuda`` on a GPU machine runs them (``bash benchmarks/device_check.sh``
runs them with the GPU benchmarks). Each compares with an independent reference: the CPU result
of the same layer (whose CPU paths the rest of the suite checks against plain ``F.convNd``), eager
mode, or the unfused model.

Tolerances. fp32 comparisons run with TF32 off (:func:`exact_fp32`): cuDNN and oneDNN then differ
only in the order of their float32 sums, a relative error of order 1e-6 for these sizes, so a
bound of 1e-4 on the norm-relative error separates rounding from any mistake (which is O(1)).
Under autocast the reference stays the CPU's fp32 result and the bounds follow the unit roundoff
``u`` of the autocast dtype (bf16 ``2^-8``, fp16 ``2^-11``); see :data:`OUTPUT_BOUND`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dcls_zoo
from dcls_zoo import Dcls1d, Dcls2d, Dcls3d, dcls_conv, dcls_kernel
from dcls_zoo.backends import BACKENDS, ConvCall, select_backend, use_backend
from dcls_zoo.functional import KernelCache, dcls_geometry

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False); bash benchmarks/device_check.sh runs these on a GPU"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# The GPU preset the fit tests stack on the quickstart recipe.
GPU_PRESET = ["-c", str(ROOT / "configs" / "presets" / "gpu_bf16.yaml")]

# Norm-relative error of an autocast output against the fp32 CPU output. The input and the fp32
# kernel are each rounded to the autocast dtype and the fp32-accumulated output is rounded once
# more: three roundings of relative size <= u per term, of random sign, so the norm-relative
# error sits near u and below 2u; 4u leaves room without admitting a wrong tap (O(1)).
OUTPUT_BOUND = {"fp32": 1e-4, "bf16": 4 * 2**-8, "fp16": 4 * 2**-11}
# Under autocast the gradients of positions are sums of kernel-gradient taps times footprint
# slopes of both signs, whose cancellation can magnify the rounding of the bf16/fp16 activations
# and output gradient: what must hold is the direction the optimiser follows (the CPU bf16
# test in test_layer_runtime.py asks the same, cosine > 0.99). CPU autocast against the CPU's
# fp32, on these layers: output errors 0.6-0.7 u, cosines >= 0.9997 (bf16) and >= 0.99999 (fp16).
GRADIENT_COSINE = {"bf16": 0.99, "fp16": 0.999}


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off for cuDNN convolutions and CUDA matmuls (cuDNN's default is on: a 10-bit
    mantissa, which no fp32 comparison with the CPU could tell from a bug), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.detach().float().cpu().flatten(), b.detach().float().cpu().flatten(), dim=0).item()


def _forward_backward(module: nn.Module, x: torch.Tensor, device: torch.device, precision: str = "fp32",
                      memory_format: torch.memory_format = torch.contiguous_format
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients (input and every parameter) of a copy of ``module`` on ``device``,
    under autocast for bf16/fp16, with a fixed output gradient (a ramp, so that every output
    position weighs differently). The copy leaves ``module`` untouched for the other device."""
    module = copy.deepcopy(module).to(device)
    x = x.detach().to(device).contiguous(memory_format=memory_format).requires_grad_()
    dtype = PRECISIONS[precision]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        y = module(x)
    if dtype is not None:
        assert y.dtype == dtype
    ramp = torch.linspace(-1, 1, y.numel(), device=device).view_as(y)
    (y.float() * ramp).sum().backward()
    grads = {"input": x.grad, **{name: p.grad for name, p in module.named_parameters()}}
    for name, grad in grads.items():  # parameters stay fp32 and get fp32 gradients, as nn.ConvNd's
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
    return y.detach().float().cpu(), {name: grad.cpu() for name, grad in grads.items()}


def _assert_matches_cpu(module: nn.Module, x: torch.Tensor, precision: str = "fp32",
                        memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, torch.Tensor]:
    """CUDA (in ``precision``) against the CPU in fp32: the output and every gradient."""
    want_y, want = _forward_backward(module, x, CPU)
    got_y, got = _forward_backward(module, x, CUDA, precision, memory_format)
    assert _relative(got_y, want_y) < OUTPUT_BOUND[precision]
    for name in want:
        if precision == "fp32":
            assert _relative(got[name], want[name]) < 1e-4, name
        else:
            assert _cosine(got[name], want[name]) > GRADIENT_COSINE[precision], name
    return got


def _spread(module: nn.Module) -> nn.Module:
    """Positions all over the window and widths off their initial value, as trained (seeded by
    the caller's torch.manual_seed): triangle's ``|SIG|`` starts at 0, where it has no gradient."""
    with torch.no_grad():
        dcls_zoo.positions.spread_model_positions_(module)
        for name, parameter in module.named_parameters():
            if name.rpartition(".")[2] == "SIG":
                parameter.uniform_(0.1, 1.0)
    return module


# ----------------------------------------------------------------------------- layers and the op


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("version", ["bilinear", "triangle", "gauss"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_layer_matches_cpu(dims, version, precision):
    """Output and gradients of weight, positions, widths, bias and input."""
    torch.manual_seed(dims)
    groups = 6 if dims == 2 else 2  # the depthwise path in 2D (cuDNN, channels_last), grouped in 1D/3D
    layer = _spread(LAYERS[dims](6, 6, 4, 7, padding="same", groups=groups, version=version))
    grads = _assert_matches_cpu(layer, torch.randn(2, 6, *{1: [24], 2: [12, 12], 3: [6, 7, 5]}[dims]), precision)
    assert ("SIG" in grads) == (version != "bilinear")


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_functional_op_matches_cpu(precision):
    """``dcls_conv`` with positions and widths shared by every channel (broadcast), and ``dcls_kernel``."""
    torch.manual_seed(0)
    channels, count = 8, 5

    class Op(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(channels, 1, count))
            self.P = nn.Parameter(torch.rand(2, 1, 1, count) * 10 - 5)  # inside the 11x11 window
            self.SIG = nn.Parameter(torch.rand(2, 1, 1, count) + 0.2)
            self.bias = nn.Parameter(torch.randn(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return dcls_conv(x, self.weight, self.P, self.SIG, 11, self.bias, padding="same", groups=channels,
                             version="gauss")

    op = Op()
    _assert_matches_cpu(op, torch.randn(2, channels, 16, 16), precision)
    gpu = copy.deepcopy(op).to(CUDA)
    kernel = dcls_kernel(gpu.weight, gpu.P, gpu.SIG, 11, version="gauss")
    assert kernel.device.type == CUDA.type and kernel.shape == (channels, 1, 11, 11)
    assert _relative(kernel, dcls_kernel(op.weight, op.P, op.SIG, 11, version="gauss")) < 1e-5


GEOMETRIES = {
    # name: (dims, channels, groups, window, spatial, stride, padding, memory format)
    "convnext_nchw": (2, 8, 8, 17, 20, 1, "same", torch.contiguous_format),
    "convnext_channels_last": (2, 8, 8, 17, 20, 1, "same", torch.channels_last),
    "stride2_nchw": (2, 8, 8, 9, 15, 2, 4, torch.contiguous_format),
    "stride2_channels_last": (2, 8, 8, 9, 15, 2, 4, torch.channels_last),
    "even_window_nchw": (2, 6, 6, (8, 6), 11, 1, "same", torch.contiguous_format),  # asymmetric padding
    "even_window_channels_last": (2, 6, 6, (8, 6), 11, 1, "same", torch.channels_last),
    "grouped_channels_last": (2, 4, 2, 5, 9, 1, 2, torch.channels_last),
    "map_smaller_than_window": (2, 6, 6, 17, 5, 1, "same", torch.channels_last),  # kernel cropped to reach
    "1d": (1, 5, 5, 25, 30, 1, "same", torch.contiguous_format),
    "1d_even_stride2": (1, 5, 5, 8, 30, 2, 3, torch.contiguous_format),
    "3d": (3, 3, 3, (5, 7, 3), 6, 1, "same", torch.contiguous_format),
    "3d_even_stride2_channels_last": (3, 3, 3, 4, 7, 2, 2, torch.channels_last_3d),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_and_layout_match_cpu(name):
    dims, channels, groups, window, spatial, stride, padding, memory_format = GEOMETRIES[name]
    torch.manual_seed(1)
    layer = _spread(LAYERS[dims](channels, channels, 4, window, stride=stride, padding=padding, groups=groups,
                                 version="gauss"))
    _assert_matches_cpu(layer, torch.randn(2, channels, *[spatial] * dims), memory_format=memory_format)


@pytest.mark.parametrize("version", ["bilinear", "gauss"])
def test_model_gradients_match_cpu(version):
    """A whole compact model: positions (and widths) shared by the blocks of each stage, their
    footprints built once per forward, gradients summed over the blocks. Rounding differences
    pass through 12 blocks and their LayerNorms, hence 1e-3 (a wrong gradient is off by O(1))."""
    torch.manual_seed(0)
    model = _spread(dcls_zoo.create_model("convnext_dcls_atto", num_classes=4, dcls_version=version,
                                          ls_init_value=1.0))
    x = torch.randn(2, 3, 32, 32)
    want_y, want = _forward_backward(model, x, CPU)
    got_y, got = _forward_backward(model, x, CUDA)
    assert _relative(got_y, want_y) < 1e-4
    assert any(name.endswith(".P") for name in want)
    assert any(name.endswith(".SIG") for name in want) == (version == "gauss")
    for name in want:
        assert _relative(got[name], want[name]) < 1e-3, name


# ----------------------------------------------------------------------------- the implicit-GEMM backend


@pytest.mark.parametrize("precision", ["fp32", "fp16"])  # the extension's two kernels
def test_implicit_gemm_matches_native(precision):
    backend = BACKENDS["implicit_gemm"]
    if backend._extension() is None:
        pytest.skip(f"depthwise_conv2d_implicit_gemm is not importable ({type(backend)._import_error})")
    torch.manual_seed(0)
    layer = _spread(Dcls2d(16, 16, 8, 17, padding="same", groups=16, version="bilinear"))
    x = torch.randn(2, 16, 24, 24)  # NCHW: the extension's layout (channels_last goes to cuDNN)
    dtype = PRECISIONS[precision] or torch.float32
    call = ConvCall.describe(x.to(CUDA, dtype), layer.kernel().to(CUDA, dtype), 16, (1, 1), layer._padding_pairs,
                             "zeros")
    assert select_backend(call) is backend  # "auto" takes it whenever it applies
    results = {}
    for name in ("implicit_gemm", "native"):
        with use_backend(name):
            results[name] = _forward_backward(layer, x, CUDA, precision)
    (got_y, got), (want_y, want) = results["implicit_gemm"], results["native"]
    # Both convolve the same rounded kernel and input, accumulating in fp32; they differ in the
    # order of the sums only (and, in fp16, in the last bit of the rounded outputs).
    bound = 1e-4 if precision == "fp32" else 2 * 2**-11
    assert _relative(got_y, want_y) < bound
    for name in want:
        assert _relative(got[name], want[name]) < (1e-4 if precision == "fp32" else 1e-2), name


# ----------------------------------------------------------------------------- torch.compile


def test_compiled_training_step_of_convnext_dcls_tiny_matches_eager():
    """fullgraph=True: the compiled forward is one graph (a break fails). Loss and every gradient
    as eager; inductor fuses LayerNorm, GELU and the kernel construction and reorders their fp32
    reductions, which over 18 blocks stays far below 1e-3 relative (a wrong gradient is O(1)).
    A second step, after the optimiser moved and clamped the positions, must not recompile."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = _spread(dcls_zoo.create_model("convnext_dcls_tiny", num_classes=10)).to(CUDA)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    labels = torch.tensor([0, 3, 7, 9], device=CUDA)
    results = []
    for model, run in ((eager, eager), (compiled_model, compiled)):
        loss = F.cross_entropy(run(x), labels)
        loss.backward()
        results.append((loss.item(), {name: p.grad for name, p in model.named_parameters()}))
    (want_loss, want), (got_loss, got) = results
    assert got_loss == pytest.approx(want_loss, rel=1e-4)
    assert any(name.endswith(".P") for name in want)
    for name in want:
        assert _relative(got[name], want[name]) < 1e-3, name
    optimizer = torch.optim.AdamW(compiled_model.parameters(), lr=1e-2)
    optimizer.step()
    dcls_zoo.clamp_model_positions_(compiled_model)
    with torch._dynamo.config.patch(error_on_recompile=True):
        F.cross_entropy(compiled(x), labels).backward()
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- the real command


def _fit(tmp_path: Path, *extra: str, steps: int, timeout: int, ranks: int = 1) -> tuple[Path, dict, str]:
    """``python -m lightning_modules fit`` of the quickstart recipe (compact ConvNeXt-dcls, EMA,
    clamping, repulsive loss, position plots) on synthetic 32x32 images, one epoch of ``steps``
    batches of 32 per process (``ranks`` processes), with the GPU preset stacked last; returns the
    run's folder, its summary and its log."""
    command = [
        sys.executable, "-m", "lightning_modules", "fit", "-c", str(ROOT / "configs" / "quickstart.yaml"),
        *GPU_PRESET, *extra, "--data=SyntheticDataModule", "--data.image_size=32", "--data.batch_size=32",
        f"--data.num_train={32 * steps * ranks}",
        "--trainer.max_epochs=1", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
        "--test_after_fit=false", "--export_after_fit=false",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    (run,) = (tmp_path / "logs" / "quickstart").iterdir()
    return run, json.loads((run / "summary.json").read_text()), log


def _check_run(run: Path, summary: dict, steps: int) -> None:
    """The run took ``steps`` optimiser steps with finite losses, learned (the synthetic classes
    are easy: the CPU's bf16 run scores 100% after 3 steps; chance is 10%) and kept fp32, finite
    positions."""
    assert summary["global_steps"] == steps
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    losses = [float(v) for r in rows for k, v in r.items() if k.startswith(("train/loss", "val/loss")) and v]
    assert any(r.get("train/loss_epoch") for r in rows) and all(math.isfinite(v) for v in losses)
    assert max(float(r["val/top1"]) for r in rows if r.get("val/top1")) > 0.5
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    positions = [v for k, v in state.items() if k.endswith(".P")]
    assert positions and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in positions)


def test_bf16_mixed_fit_of_a_compact_model(tmp_path):
    run, summary, log = _fit(tmp_path, steps=20, timeout=300)
    assert "GPU available: True (cuda), used: True" in log
    assert "Using bfloat16 Automatic Mixed Precision (AMP)" in log
    _check_run(run, summary, steps=20)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices for a 2-process DDP fit")
def test_ddp_fit_on_two_gpus(tmp_path):
    """Two processes of 10 steps each over a 640-image set (each rank sees half)."""
    run, summary, log = _fit(tmp_path, "-c", str(ROOT / "configs" / "presets" / "ddp.yaml"), "--trainer.devices=2",
                        steps=10, ranks=2, timeout=400)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    _check_run(run, summary, steps=10)


# ----------------------------------------------------------------------------- eval cache and fuse


def test_eval_on_cuda_builds_the_kernel_every_call_and_sees_every_edit():
    """On a GPU the layer never caches (comparing parameters would synchronise the device): each
    call builds the kernel from the parameters as they are, .data edits included."""
    torch.manual_seed(0)
    layer = _spread(Dcls2d(6, 6, 5, 9, padding="same", groups=6, version="gauss")).eval()
    gpu = copy.deepcopy(layer).to(CUDA)
    x = torch.randn(2, 6, 12, 12)
    with torch.no_grad():
        for edit in (lambda m: None, lambda m: m.P.data.mul_(-0.5), lambda m: m.SIG.data.add_(0.3)):
            edit(layer), edit(gpu)
            assert _relative(gpu(x.to(CUDA)), layer(x)) < 1e-5
    assert gpu._kernel_cache.builds == 0 and layer._kernel_cache.builds == 3


def test_kernel_cache_holds_cuda_tensors_exactly():
    """KernelCache itself on CUDA tensors: a hit for equal tensors only, never across devices."""
    geometry = dcls_geometry(2, 9, padding="same", groups=4, version="bilinear")
    weight, P = torch.randn(4, 1, 5, device=CUDA), torch.randn(2, 4, 1, 5, device=CUDA)
    cache, prepared = KernelCache(), (torch.randn(4, 1, 9, 9, device=CUDA), ((4, 4), (4, 4)))
    cache.put((weight, P), torch.float32, geometry, prepared)
    assert cache.get((weight.clone(), P.clone()), torch.float32, geometry) is prepared
    assert cache.get((weight.cpu(), P.cpu()), torch.float32, geometry) is None  # another device
    assert cache.get((weight, P), torch.bfloat16, geometry) is None  # another compute dtype
    P[0, 0, 0, 0] += 1
    assert cache.get((weight, P), torch.float32, geometry) is None  # an in-place edit


def test_a_model_moved_between_cpu_and_cuda_never_uses_a_stale_kernel():
    """The CPU cache is filled, the model moves to CUDA and its positions change there, then it
    comes back: the CPU forward must use the new positions."""
    torch.manual_seed(0)
    model = _spread(dcls_zoo.create_model("convnext_dcls_atto", num_classes=3, ls_init_value=1.0)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)  # fills the CPU caches
        model.to(CUDA)
        for parameter in dcls_zoo.position_parameters(model):
            parameter.mul_(-1)
        on_gpu = model(x.to(CUDA)).cpu()
        model.to(CPU)
        after = model(x)
        reference = copy.deepcopy(model)(x)  # copies start with empty caches
    assert _relative(after, before) > 1e-2  # the edit matters
    assert _relative(after, reference) < 1e-6 and _relative(on_gpu, reference) < 1e-4


def test_fuse_on_cuda_matches_the_dcls_model():
    torch.manual_seed(0)
    model = _spread(dcls_zoo.create_model("convnext_dcls_atto", num_classes=3, ls_init_value=1.0)).to(CUDA).eval()
    fused = dcls_zoo.fuse(model)
    assert not dcls_zoo.position_parameters(fused)
    assert all(p.device.type == CUDA.type for p in fused.parameters())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(convs) == 12 and all(isinstance(m.weight, nn.Parameter) for m in convs)
    x = torch.randn(2, 3, 32, 32, device=CUDA)
    with torch.no_grad():
        assert _relative(fused(x), model(x)) < 1e-5
        with torch.autocast("cuda", dtype=torch.bfloat16):  # inference as the GPU preset runs it
            assert _relative(fused(x), model(x).float()) < OUTPUT_BOUND["bf16"]
