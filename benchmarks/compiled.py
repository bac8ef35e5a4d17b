"""torch.compile against eager: ConvNeXt-dcls and timm's ConvNeXt-T compiled the same way, side by side.

Every model runs eager and compiled (``torch.compile``, inductor, default mode) in one
interleaved set of timed rounds (A, B, C, ..., then in reverse), so that the ratios between
models and between modes come from the same minutes of the machine:

* training: one AdamW step (forward, cross-entropy, backward, step, position clamping), the
  model compiled as a whole (``torch.compile(model)``; the optimiser step stays eager);
* inference: eval forward under ``torch.no_grad`` of the *fused* model (:func:`dcls_zoo.fuse`:
  the DCLS layers become plain convolutions holding their kernels, as exported models run);
* compilation: the seconds of the first compiled call (tracing, inductor's code generation and
  its compiler, and the call itself), and how many graphs dynamo made and where it broke them.
  A model that breaks its graph or recompiles pays for it here; the timed rounds then count
  any graph compiled while they ran (recompilation), which must be none. The compilation
  caches start empty (a new inductor and Triton cache directory per run).

The DCLS models get their positions spread over the whole window, as in a trained model.
Compiled DCLS layers run their default convolution paths: measured CPU variant choices
(:mod:`dcls_zoo.autotune`) apply to eager calls only.

    python benchmarks/compiled.py [--quick] [--threads N] [--repeats N] [--device cpu|cuda]
        [--batch B] [--size S] [--precision fp32|bf16] [--channels-last] [--models BASELINE MODEL ...]

``benchmarks/model_throughput.py --device cuda`` (and ``--compile`` on the CPU) prints this table too.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MIB, add_run_arguments, apply_run_arguments, interleaved_best_seconds, machine_description  # noqa: E402

import dcls_zoo  # noqa: E402

DEFAULT_MODELS = ("convnext_tiny", "convnext_dcls_tiny")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
NUM_CLASSES = 1000


@dataclass(frozen=True)
class Settings:
    """What one side-by-side run measures: the first model is the baseline of the ratios."""

    models: tuple[str, ...]
    device: torch.device
    batch: int
    size: int
    precision: str  # a key of PRECISIONS; "bf16" runs under torch.autocast, parameters stay fp32
    channels_last: bool
    repeats: int

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "NCHW"
        mixed = "bf16 autocast" if self.precision == "bf16" else "float32"
        threads = f", {torch.get_num_threads()} thread(s)" if self.device.type == "cpu" else ""
        return (f"batch {self.batch}, {self.size}x{self.size}, {layout}, {mixed}, {self.device.type}{threads}, "
                f"torch {torch.__version__}, best of {self.repeats} (interleaved)")


@dataclass
class Compilation:
    """One compiled function's first call: seconds, graphs dynamo made, graph breaks."""

    seconds: float
    graphs: int
    breaks: int


def use_cold_compile_cache() -> None:
    """Point inductor (and Triton) at a new, empty cache directory for the rest of this process,
    so that first compiled calls are timed cold, as a user's first run is. Inductor reads the
    variables at each compilation (importing timm already fixed them to the default cache)."""
    directory = tempfile.mkdtemp(prefix="dcls_zoo_compiled_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
    os.environ["TRITON_CACHE_DIR"] = os.path.join(directory, "triton")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(name: str, settings: Settings) -> nn.Module:
    """``name`` as users build it (timm for plain models, dcls_zoo for DCLS ones), on the device,
    with DCLS positions spread over their windows as after training."""
    if name in dcls_zoo.list_models():
        model = dcls_zoo.create_model(name, num_classes=NUM_CLASSES)
        dcls_zoo.positions.spread_model_positions_(model)  # a no-op for the plain models dcls_zoo registers
    else:
        model = timm.create_model(name, num_classes=NUM_CLASSES)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    return model.to(settings.device, memory_format=memory_format)


def training_step(model: nn.Module, run: Callable, images: torch.Tensor, labels: torch.Tensor,
                  dtype: torch.dtype | None) -> Callable[[], None]:
    """One AdamW step of ``model`` through ``run`` (the model, or its compiled form)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(run(images), labels)
        loss.backward()
        optimizer.step()
        dcls_zoo.clamp_model_positions_(model)
        synchronize(images.device)

    return step


def inference(model: nn.Module, run: Callable, images: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    model.eval()

    def forward() -> None:
        with torch.no_grad(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            run(images)
        synchronize(images.device)

    return forward


def _dynamo_counts() -> tuple[int, int]:
    """Graphs dynamo has made so far in this process, and graph breaks."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def compile_first_call(function: Callable[[], None]) -> Compilation:
    """Call a compiled ``function`` for the first time: its seconds, graphs and graph breaks."""
    graphs, breaks = _dynamo_counts()
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    graphs_after, breaks_after = _dynamo_counts()
    return Compilation(seconds, graphs_after - graphs, breaks_after - breaks)


def peak_cuda_memory_bytes(function: Callable[[], None], device: torch.device) -> int:
    """Peak bytes the CUDA caching allocator handed out during one call (already warm)."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    function()
    return torch.cuda.max_memory_allocated(device) - base


def _print_peak_memory(train: dict[str, Callable[[], None]], device: torch.device, out) -> None:
    """On CUDA, one line with the allocator's peak of one training step of each function."""
    if device.type != "cuda":
        return
    peaks = ", ".join(f"{name} {peak_cuda_memory_bytes(step, device) / MIB:.0f} MiB" for name, step in train.items())
    print(f"\nPeak training-step memory (CUDA caching allocator, above what was allocated before): {peaks}.",
          file=out, flush=True)


def _ratio(base: float, value: float) -> str:
    return f"{base / value:.2f}x"


def _print_eager_table(settings: Settings, train: dict[str, float], infer: dict[str, float], out) -> None:
    baseline = settings.models[0]
    print(f"Eager, {settings.describe()}; DCLS inference fused.\n", file=out)
    print(f"| model | training s/step | vs {baseline} | inference s/batch | vs {baseline} |", file=out)
    print("|---|---:|---:|---:|---:|", file=out)
    for name in settings.models:
        print(f"| {name} | {train[name]:.4f} | {_ratio(train[baseline], train[name])} | "
              f"{infer[name]:.4f} | {_ratio(infer[baseline], infer[name])} |", file=out, flush=True)


def _print_side_by_side_table(settings: Settings, train: dict[str, float], infer: dict[str, float],
                              compilations: dict[str, Compilation], out) -> None:
    baseline = settings.models[0]
    print(f"\nEager and compiled (torch.compile, inductor, default mode, cold cache), {settings.describe()}; DCLS "
          "inference fused. Ratios: the baseline's time in the same mode / the model's (higher is better); "
          "compiled speed-up: eager time / compiled time of the same model.\n", file=out)
    print(f"| model | mode | training s/step | vs {baseline} | compiled speed-up | inference s/batch | vs {baseline} | "
          "compiled speed-up | first compiled call s (training / inference) | graphs, breaks |", file=out)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|", file=out)
    for mode in ("eager", "compiled"):
        for name in settings.models:
            row, base = (name, baseline) if mode == "eager" else (f"{name} (compiled)", f"{baseline} (compiled)")
            cells = [name, mode, f"{train[row]:.4f}", _ratio(train[base], train[row]),
                     "-" if mode == "eager" else _ratio(train[name], train[row]),
                     f"{infer[row]:.4f}", _ratio(infer[base], infer[row]),
                     "-" if mode == "eager" else _ratio(infer[name], infer[row])]
            if mode == "eager":
                cells += ["-", "-"]
            else:
                t, i = compilations[f"{name} training"], compilations[f"{name} inference"]
                cells += [f"{t.seconds:.1f} / {i.seconds:.1f}", f"{t.graphs + i.graphs}, {t.breaks + i.breaks}"]
            print("| " + " | ".join(cells) + " |", file=out)


def side_by_side(settings: Settings, compiled: bool = True, out=sys.stdout) -> dict[str, dict[str, float]]:
    """Measure every model eager (and compiled), print the Markdown tables to ``out``; returns
    ``{"train" | "infer": {row name: seconds}}``.

    The eager table is printed first (seconds), so that a run cut short still shows it; the
    compiled functions are then compiled one by one (a line each), and all functions, eager and
    compiled, are timed again together for the final table.
    """
    if compiled:
        use_cold_compile_cache()
    device, dtype = settings.device, PRECISIONS[settings.precision]
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    images = torch.randn(settings.batch, 3, settings.size, settings.size, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, NUM_CLASSES, (settings.batch,), device=device)
    print(f"Machine: {machine_description(device)}.\n", file=out, flush=True)

    print("  building models ...", file=sys.stderr, flush=True)
    models = {name: build_model(name, settings) for name in settings.models}
    fused = {name: dcls_zoo.fuse(model).to(memory_format=memory_format) for name, model in models.items()}
    train = {name: training_step(model, model, images, labels, dtype) for name, model in models.items()}
    infer = {name: inference(fused[name], fused[name], images, dtype) for name in models}

    print("  eager ...", file=sys.stderr, flush=True)
    eager = {"train": interleaved_best_seconds(train, settings.repeats),
             "infer": interleaved_best_seconds(infer, settings.repeats)}
    _print_eager_table(settings, eager["train"], eager["infer"], out)
    if not compiled:
        _print_peak_memory(train, device, out)
        return eager

    compilations: dict[str, Compilation] = {}
    for name, model in models.items():
        for kind, function in (
            ("training", training_step(model, torch.compile(model), images, labels, dtype)),
            ("inference", inference(fused[name], torch.compile(fused[name]), images, dtype)),
        ):
            print(f"  compiling {name} {kind} ...", file=sys.stderr, flush=True)
            compilation = compilations[f"{name} {kind}"] = compile_first_call(function)
            (train if kind == "training" else infer)[f"{name} (compiled)"] = function
            print(f"\nCompiled {name} {kind}: first call {compilation.seconds:.1f} s, {compilation.graphs} graph(s), "
                  f"{compilation.breaks} graph break(s).", file=out, flush=True)

    print("  eager and compiled, interleaved ...", file=sys.stderr, flush=True)
    graphs_before, _ = _dynamo_counts()
    seconds = {"train": interleaved_best_seconds(train, settings.repeats),
               "infer": interleaved_best_seconds(infer, settings.repeats)}
    recompiled = _dynamo_counts()[0] - graphs_before
    _print_side_by_side_table(settings, seconds["train"], seconds["infer"], compilations, out)
    print(f"\nGraphs compiled during the timed rounds (recompilations): {recompiled}.", file=out, flush=True)
    _print_peak_memory(train, device, out)
    return seconds


def add_shape_arguments(parser: argparse.ArgumentParser, batch: int, precision: str, channels_last: bool) -> None:
    parser.add_argument("--batch", type=int, default=batch, help=f"images per step (default {batch})")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=precision,
                        help=f"fp32, or bf16 autocast with fp32 parameters (default {precision})")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=channels_last,
                        help="models and images in channels_last memory format")


def check_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, models: Sequence[str]) -> None:
    """Refuse settings that cannot run, naming the option."""
    if args.batch < 1 or args.size < 32:
        parser.error(f"--batch must be >= 1 and --size >= 32, got {args.batch} and {args.size}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    if len(models) < 2:
        parser.error(f"--models needs a baseline and at least one model to compare, got {list(models)}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, default_threads=torch.get_num_threads())
    add_shape_arguments(parser, batch=8, precision="fp32", channels_last=False)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="the baseline first, then the models to compare (default: %(default)s)")
    args = parser.parse_args(argv)
    check_settings(parser, args, args.models)
    device, repeats = apply_run_arguments(args)
    settings = Settings(tuple(args.models), device, args.batch, args.size, args.precision, args.channels_last, repeats)
    side_by_side(settings, compiled=True)


if __name__ == "__main__":
    main()
