"""Whole models on this CPU: ConvNeXt-dcls against timm's ConvNeXt-T, side by side in one run.

Models are built as users build them (``timm.create_model`` / ``dcls_zoo.create_model``, NCHW
float32 input, batch 8, 224x224) and measured interleaved (A, B, A, B, ...) so that machine noise
hits both alike. The DCLS models get their positions spread over the whole window, as in a
trained model (:func:`dcls_zoo.spread_model_positions_`); ``convnext_dcls_tiny (fresh)`` keeps the
initial ``N(0, 0.5)`` positions, whose elements reach only the window's centre, so the CPU layers
convolve about 7x7 taps instead of 17x17 early in training. The targets are read on the
trained-like models. ``convnext_tiny without depthwise convs`` (every ``conv_dw`` an identity) times
the rest of the network, which both models share, so that the depthwise part of each step can be
read off: that part is where the models differ.

* training: one AdamW step (forward, cross-entropy, backward, step, position clamping);
* inference: eval forward under ``torch.no_grad``, DCLS both as trained (cached kernels) and
  after :func:`dcls_zoo.fuse`;
* peak training memory: peak of live tensor bytes during one training step (see ``common.py``).

Ratios are ConvNeXt-T time / model time (higher is better) and model memory / ConvNeXt-T memory.
``--profile`` adds the top operators of one training step of each model.

    python benchmarks/model_throughput.py [--quick] [--threads N] [--repeats N] [--profile] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dcls_zoo  # noqa: E402
from common import MIB, add_run_arguments, apply_run_arguments, machine_description, peak_memory_bytes  # noqa: E402

BASELINE = "convnext_tiny"
TRAINED = ("convnext_dcls_tiny", "convnext_dcls_gauss_tiny")
FRESH = "convnext_dcls_tiny (fresh)"
REST = "convnext_tiny without depthwise convs"
BATCH, SIZE = 8, 224
TARGETS = {"convnext_dcls_tiny": 1.0, "convnext_dcls_gauss_tiny": 0.95, "fused convnext_dcls_tiny": 0.95}


def _training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        dcls_zoo.clamp_model_positions_(model)
        _synchronize(images)

    return step


def _inference(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(images)
        _synchronize(images)

    return forward


def _synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:  # time the work, not the kernel launches
        torch.cuda.synchronize()


def _interleaved_best(functions: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Best seconds per call of each function, calling them in turn ``repeats`` times."""
    for function in functions.values():
        function()  # warm-up: allocator, oneDNN primitive caches, kernel caches
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _profile(name: str, step: Callable[[], None]) -> None:
    from torch.profiler import profile

    with profile() as prof:
        step()
    print(f"\nTop operators of one training step of {name}:\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, default_threads=torch.get_num_threads())  # --quick also skips memory
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    device, repeats = apply_run_arguments(args)
    images = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    labels = torch.randint(0, 1000, (BATCH,), device=device)

    print("  building models ...", file=sys.stderr, flush=True)
    models = {BASELINE: timm.create_model(BASELINE).to(device)}
    models.update({name: dcls_zoo.create_model(name).to(device) for name in TRAINED})
    for name in TRAINED:
        dcls_zoo.spread_model_positions_(models[name])
    models[FRESH] = dcls_zoo.create_model("convnext_dcls_tiny").to(device)
    models[REST] = timm.create_model(BASELINE).to(device)
    for stage in models[REST].stages:
        for block in stage.blocks:
            block.conv_dw = nn.Identity()

    print("  training steps ...", file=sys.stderr, flush=True)
    steps = {name: _training_step(model, images, labels) for name, model in models.items()}
    train = _interleaved_best(steps, repeats)

    print("  inference ...", file=sys.stderr, flush=True)
    fused = dcls_zoo.fuse(models["convnext_dcls_tiny"])
    forwards = {
        BASELINE: _inference(models[BASELINE], images),
        "convnext_dcls_tiny": _inference(models["convnext_dcls_tiny"], images),
        "fused convnext_dcls_tiny": _inference(fused, images),
    }
    infer = _interleaved_best(forwards, repeats)

    memory = {}
    if not args.quick:
        print("  peak memory ...", file=sys.stderr, flush=True)
        memory = {name: peak_memory_bytes(steps[name]) for name in (BASELINE, "convnext_dcls_tiny")}

    print(f"\nMachine: {machine_description(device)}.\n")
    print(f"Whole models, batch {BATCH}, {SIZE}x{SIZE}, NCHW float32, {device.type}, torch {torch.__version__}, "
          f"{args.threads} thread(s), best of {repeats} (interleaved).\n")
    print("| model | training s/step | training throughput vs convnext_tiny | inference s/batch | "
          "inference throughput vs convnext_tiny |")
    print("|---|---:|---:|---:|---:|")
    for name in (BASELINE, *TRAINED, FRESH, REST, "fused convnext_dcls_tiny"):
        train_cells = (f"{train[name]:.2f} | {train[BASELINE] / train[name]:.2f}x" if name in train else "- | -")
        infer_cells = (f"{infer[name]:.3f} | {infer[BASELINE] / infer[name]:.2f}x" if name in infer else "- | -")
        print(f"| {name} | {train_cells} | {infer_cells} |")
    depthwise = {name: train[name] - train[REST] for name in (BASELINE, *TRAINED, FRESH)}
    print(f"\nDepthwise convolutions per training step (step minus the rest of the network, "
          f"{train[REST]:.2f} s): " + ", ".join(
              f"{name} {seconds:.2f} s ({seconds / depthwise[BASELINE]:.1f}x)" for name, seconds in depthwise.items()))
    if memory:
        ratio = memory["convnext_dcls_tiny"] / memory[BASELINE]
        print(f"\nPeak training-step tensor memory: convnext_tiny {memory[BASELINE] / MIB:.0f} MiB, "
              f"convnext_dcls_tiny {memory['convnext_dcls_tiny'] / MIB:.0f} MiB ({ratio:.2f}x; target <= 1.15x)")
    verdicts = []
    for name, target in TARGETS.items():
        table = infer if name.startswith("fused") else train
        ratio = table[BASELINE] / table[name]
        verdicts.append(f"{name} {'training' if name in TRAINED else 'inference'} {ratio:.2f}x "
                        f"(target >= {target}): {'MET' if ratio >= target else 'NOT MET'}")
    fresh = train[BASELINE] / train[FRESH]
    verdicts.append(f"(fresh positions, early training: convnext_dcls_tiny training {fresh:.2f}x)")
    print("\n" + "\n".join(verdicts))
    if args.profile:
        for name in (BASELINE, "convnext_dcls_tiny"):
            _profile(name, steps[name])


if __name__ == "__main__":
    main()
