"""Whole models on this CPU: ConvNeXt-dcls against timm's ConvNeXt-T, side by side in one run.

Models are built as users build them (``timm.create_model`` / ``dcls_zoo.create_model``, NCHW
float32 input, batch 8, 224x224) and measured interleaved (A, B, A, B, ...) so that machine noise
hits both alike. The DCLS models get their positions spread over the whole window, as in a
trained model (:func:`dcls_zoo.positions.spread_model_positions_`); ``convnext_dcls_tiny (fresh)`` keeps the
initial ``N(0, 0.5)`` positions, whose elements reach only the window's centre, so the CPU layers
convolve about 7x7 taps instead of 17x17 early in training. The targets are read on the
trained-like models.

* training: one AdamW step (forward, cross-entropy, backward, step, position clamping);
* inference: eval forward under ``torch.no_grad``, DCLS both as trained (cached kernels) and
  after :func:`dcls_zoo.fuse`;
* peak training memory: peak of live tensor bytes during one training step (see ``common.py``);
* ``(default paths)``: the same DCLS model with :mod:`dcls_zoo.autotune` off, i.e. without the
  per-shape measured choice of convolution variants, side by side;
* layers alone: every depthwise layer timed alone (forward, and forward + backward) on the tensor
  the model hands it. The models differ only there, so the baseline's time minus its own
  depthwise layers is the rest of the network, which they share. A training step cannot cost
  less than that rest plus three forward-sized convolutions per layer (the forward, the input
  gradient and the weight gradient have the same multiply-adds), nor inference less than the
  rest plus one: the floor line prints the ratios that would give, and the multiply-add rate
  oneDNN's depthwise forward reaches on each stage of this CPU.

Ratios are ConvNeXt-T time / model time (higher is better) and model memory / ConvNeXt-T memory.
``--profile`` adds the top operators of one training step of each model.

``--compile`` adds, after that report, every model eager and compiled (``torch.compile``,
inductor) side by side in one interleaved set, with each compilation's seconds, graphs and graph
breaks (:mod:`compiled`). ``--device cuda`` measures what GPUs train: bf16 autocast, channels_last,
batch 64 (``--batch``), training and fused inference of the three models (eager; with
``--compile`` also compiled) and the CUDA allocator's peak training memory; the CPU-specific
sections (measured variant choices, fresh positions, the oneDNN floor) are left out there.

    python benchmarks/model_throughput.py [--quick] [--threads N] [--repeats N] [--profile] [--compile]
    python benchmarks/model_throughput.py --device cuda [--compile] [--batch 64] [--repeats N]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    MIB,
    add_run_arguments,
    apply_run_arguments,
    best_time_seconds,
    interleaved_best_seconds,
    machine_description,
    peak_memory_bytes,
)
from compiled import Settings, side_by_side  # noqa: E402

import dcls_zoo  # noqa: E402
from dcls_zoo import autotune, backends  # noqa: E402

BASELINE = "convnext_tiny"
TRAINED = ("convnext_dcls_tiny", "convnext_dcls_gauss_tiny")
FRESH = "convnext_dcls_tiny (fresh)"
DEFAULT_PATHS = {"convnext_dcls_tiny (default paths)": "convnext_dcls_tiny",
                 "convnext_dcls_tiny (fresh, default paths)": FRESH}
BATCH, SIZE = 8, 224
CUDA_BATCH = 64  # a GPU's share of a real batch (the paper: 4096 over 32 GPUs = 128) that keeps it busy
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


def _without_autotune(function: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with autotune.use_autotune(False):
            function()

    return run


def _depthwise_layers(model: nn.Module) -> list[nn.Module]:
    return [block.conv_dw for stage in model.stages for block in stage.blocks]


def _captured_inputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The tensor the model hands each of its depthwise layers (one eval forward)."""
    inputs: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
               for layer in _depthwise_layers(model)]
    model.eval()
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return inputs


def _layer_times(model: nn.Module, images: torch.Tensor, repeats: int) -> list[tuple[tuple, float, float]]:
    """``(input shape, forward s, forward + backward s)`` of each depthwise layer run alone on the
    tensor the model hands it: the forward without autograd (cached DCLS kernels, as inference
    runs), the training pass in train mode with a random output gradient (DCLS kernels built)."""
    times, was_training = [], model.training
    for layer, x in zip(_depthwise_layers(model), _captured_inputs(model, images)):
        x = x.detach().requires_grad_()
        grad = torch.randn_like(layer(x))

        def forward() -> None:
            with torch.no_grad():
                layer(x)
            _synchronize(x)

        def training() -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).backward(grad)
            _synchronize(x)

        layer.eval()
        forward_seconds = best_time_seconds(forward, repeats)
        layer.train()
        times.append((tuple(x.shape), forward_seconds, best_time_seconds(training, repeats)))
    model.train(was_training)  # the memory measurement runs training steps after this
    return times


def _depthwise_macs(model: nn.Module, shapes: list[tuple]) -> list[int]:
    """Multiply-adds of each depthwise layer's forward as it is convolved (DCLS kernels cropped
    to the taps their elements reach and to the taps that meet the map)."""
    macs = []
    for layer, shape in zip(_depthwise_layers(model), shapes):
        if isinstance(layer, dcls_zoo.DclsConvNd):
            kernel, padding = layer._kernel_and_padding()
        else:
            kernel, padding = layer.weight, tuple((p, p) for p in layer.padding)
        kernel, _ = backends.crop_to_reach(kernel, shape[2:], layer.stride, padding)
        macs.append(math.prod(shape) * math.prod(kernel.shape[2:]))
    return macs


def _layer_report(models: dict[str, nn.Module], images: torch.Tensor, repeats: int, train: dict[str, float],
                  infer: dict[str, float]) -> list[str]:
    """Where a step's time goes, layer by layer, and the convolution-bound floor of each DCLS model
    (see the module docstring)."""
    times = {name: _layer_times(models[name], images, repeats) for name in (BASELINE, *TRAINED, FRESH)}
    macs = {name: _depthwise_macs(models[name], [shape for shape, _, _ in rows]) for name, rows in times.items()}
    forward = {name: sum(row[1] for row in rows) for name, rows in times.items()}
    training = {name: sum(row[2] for row in rows) for name, rows in times.items()}
    # the rest of the network, which every model shares: the baseline without its depthwise layers
    rest_train, rest_infer = train[BASELINE] - training[BASELINE], infer[BASELINE] - forward[BASELINE]
    lines = [
        f"Depthwise layers alone, summed over the {len(times[BASELINE])} blocks (forward / forward + backward, "
        "and the multiply-adds of one forward against convnext_tiny's):",
        "",
    ]
    for name in times:
        lines.append(f"- {name}: {forward[name] * 1e3:.0f} / {training[name] * 1e3:.0f} ms, "
                     f"{sum(macs[name]) / sum(macs[BASELINE]):.1f}x the multiply-adds")
    lines += ["", f"The rest of the network (convnext_tiny's time minus its depthwise layers): training "
              f"{rest_train:.2f} s, inference {rest_infer:.3f} s.", ""]
    for name in TRAINED:
        per_stage: dict[int, list[float]] = {}
        for (shape, seconds, _), count in zip(times[name], macs[name]):
            per_stage.setdefault(shape[1], []).append(count / seconds / 1e9)
        rates = ", ".join(f"{sum(r) / len(r):.0f}" for r in per_stage.values())
        floor_train = rest_train + 3 * forward[name]
        text = (f"- {name}: oneDNN's depthwise forward runs at {rates} GMAC/s on stages 1-4. Floor (three "
                f"forward-sized convolutions per layer): training {train[BASELINE] / floor_train:.2f}x "
                f"({rest_train:.2f} + 3 x {forward[name]:.2f} s; measured {train[BASELINE] / train[name]:.2f}x)")
        if name == "convnext_dcls_tiny":
            floor_infer = rest_infer + forward[name]
            text += (f", inference {infer[BASELINE] / floor_infer:.2f}x ({rest_infer:.3f} + {forward[name]:.3f} s; "
                     f"fused measured {infer[BASELINE] / infer['fused convnext_dcls_tiny']:.2f}x)")
        lines.append(text)
    return lines


def _choices_report() -> str:
    """Which measured convolution variants (:mod:`dcls_zoo.autotune`) differ from the default paths."""
    records = autotune.measurements()
    changed = [r for r in records if r.chosen != r.default]
    text = f"Measured variant choices: {len(records)} (pass, input shape, window), {len(changed)} off the default path"
    for record in changed:
        pass_name, shape, _, _, window = record.key[:5]
        timings = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in record.seconds.items())
        text += f"\n- {pass_name} {tuple(shape)} window {tuple(window)}: {record.chosen} ({timings})"
    return text


def _synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:  # time the work, not the kernel launches
        torch.cuda.synchronize()


def _profile(name: str, step: Callable[[], None]) -> None:
    from torch.profiler import profile

    with profile() as prof:
        step()
    print(f"\nTop operators of one training step of {name}:\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, default_threads=torch.get_num_threads())  # --quick also skips memory
    parser.add_argument("--profile", action="store_true", help="CPU: the top operators of one training step")
    parser.add_argument("--compile", action="store_true",
                        help="also every model compiled with torch.compile (inductor), side by side with eager")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"--device cuda only: images per step (default {CUDA_BATCH}); the CPU report runs {BATCH}")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    if not cuda and args.batch is not None:
        parser.error(f"--batch applies to --device cuda; the CPU report runs batch {BATCH} "
                     "(benchmarks/compiled.py takes any batch on the CPU)")
    if cuda and args.profile:
        parser.error("--profile applies to the CPU report")
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    device, repeats = apply_run_arguments(args)
    if cuda:
        settings = Settings((BASELINE, *TRAINED), device, args.batch or CUDA_BATCH, SIZE, "bf16", True, repeats)
        side_by_side(settings, compiled=args.compile)
        return
    images = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    labels = torch.randint(0, 1000, (BATCH,), device=device)

    print("  building models ...", file=sys.stderr, flush=True)
    models = {BASELINE: timm.create_model(BASELINE).to(device)}
    models.update({name: dcls_zoo.create_model(name).to(device) for name in TRAINED})
    for name in TRAINED:
        dcls_zoo.positions.spread_model_positions_(models[name])
    models[FRESH] = dcls_zoo.create_model("convnext_dcls_tiny").to(device)

    print("  training steps ...", file=sys.stderr, flush=True)
    steps = {name: _training_step(model, images, labels) for name, model in models.items()}
    for name, source in DEFAULT_PATHS.items():  # same model, same optimizer, other paths
        steps[name] = _without_autotune(steps[source])
    train = interleaved_best_seconds(steps, repeats)

    print("  inference ...", file=sys.stderr, flush=True)
    fused = dcls_zoo.fuse(models["convnext_dcls_tiny"])
    forwards = {
        BASELINE: _inference(models[BASELINE], images),
        "convnext_dcls_tiny": _inference(models["convnext_dcls_tiny"], images),
        "fused convnext_dcls_tiny": _inference(fused, images),
    }
    infer = interleaved_best_seconds(forwards, repeats)

    print("  depthwise layers alone ...", file=sys.stderr, flush=True)
    layers = _layer_report(models, images, repeats, train, infer)

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
    for name in (BASELINE, *TRAINED, FRESH, *DEFAULT_PATHS, "fused convnext_dcls_tiny"):
        train_cells = (f"{train[name]:.2f} | {train[BASELINE] / train[name]:.2f}x" if name in train else "- | -")
        infer_cells = (f"{infer[name]:.3f} | {infer[BASELINE] / infer[name]:.2f}x" if name in infer else "- | -")
        print(f"| {name} | {train_cells} | {infer_cells} |")
    print("\n" + "\n".join(layers))
    print("\n" + _choices_report())
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
    if args.compile:
        del models, steps, forwards, fused  # the compiled run builds its own
        print("\n  compiled, side by side with eager ...", file=sys.stderr, flush=True)
        print()
        side_by_side(Settings((BASELINE, *TRAINED), device, BATCH, SIZE, "fp32", False, repeats), compiled=True)


if __name__ == "__main__":
    main()
