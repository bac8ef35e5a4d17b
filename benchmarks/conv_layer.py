"""One depthwise DCLS layer, forward + backward: ours vs the official ``dcls`` 0.1.1 vs ``nn.Conv2d``.

For every ConvNeXt-T stage shape (C, H) = (96, 56), (192, 28), (384, 14), (768, 7), batch 8,
NCHW float32 input, window 17 and 34 elements (bilinear, the paper's ConvNeXt-dcls layer) — and
the Gaussian 23 / 26 layer — this times forward + backward of:

* ours: ``dcls_zoo.Dcls2d`` with the automatic backend (kernel construction included), with
  positions spread uniformly over the window as in a trained model, and as freshly
  initialised (``N(0, 0.5)``: the elements reach only the window's centre, whose taps alone are
  convolved on the CPU);
* official: ``DCLS.construct.modules.Dcls2d`` (``version="v0"``, and ``"gauss"``), which builds
  its kernel densely and runs ``F.conv2d`` (its implicit-GEMM path needs CUDA);
* ``nn.Conv2d`` with a dense 17x17 (23x23) depthwise kernel, NCHW, what a user would write.

The official layer and the trained-like ours share their positions, so all three compute the
same thing (checked on the first repeat: outputs of ours and the official layer agree to 1e-4).

A second table times the layers as they run inside ConvNeXt: timm's blocks hand their depthwise
convolution a channels_last tensor (the block's permute back from NHWC), so there ours and timm's
7x7 ``nn.Conv2d`` both get channels_last input. Weighing the stages by ConvNeXt-T's depths
(3, 3, 9, 3) gives the depthwise work of one training step: the part of the whole-model
comparison (``model_throughput.py``) that differs between the two models.

Markdown tables on stdout, progress on stderr.

    python benchmarks/conv_layer.py [--quick] [--threads N] [--repeats N] [--device cuda]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_run_arguments, apply_run_arguments, best_time_seconds, machine_description  # noqa: E402

from dcls_zoo import Dcls2d  # noqa: E402
from dcls_zoo.construct import position_bounds  # noqa: E402

STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))
DEPTHS = (3, 3, 9, 3)  # ConvNeXt-T blocks per stage
LAYERS = (("bilinear", "v0", 17, 34), ("gauss", "gauss", 23, 26))
BATCH = 8


def _official(channels: int, window: int, count: int, version: str) -> nn.Module:
    from DCLS.construct.modules import Dcls2d as OfficialDcls2d

    logging.disable(logging.WARNING)  # it logs four lines per layer about its CUDA path
    try:
        return OfficialDcls2d(channels, channels, kernel_count=count, dilated_kernel_size=window,
                              padding=window // 2, groups=channels, version=version)
    finally:
        logging.disable(logging.NOTSET)


def _ours_like(official: nn.Module, channels: int, window: int, count: int, version: str) -> Dcls2d:
    ours = Dcls2d(channels, channels, count, window, padding="same", groups=channels, version=version,
                  device=official.weight.device)
    with torch.no_grad():
        ours.weight.copy_(official.weight)
        ours.bias.copy_(official.bias)
        # official v0 stores rows first like us; its gauss stores the width first
        flip = (lambda t: t) if version == "bilinear" else (lambda t: t.flip(0))
        ours.P.copy_(flip(official.P))
        if ours.SIG is not None:
            ours.SIG.copy_(flip(official.SIG))
    return ours


def _step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
        if x.is_cuda:  # time the work, not the launches
            torch.cuda.synchronize()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, default_threads=1)  # on cuda the official layer uses its native path
    args = parser.parse_args()
    device, repeats = apply_run_arguments(args)

    rows = []
    for interpolation, official_version, window, count in LAYERS:
        for channels, size in STAGES:
            print(f"  {interpolation} C={channels} H={size} ...", file=sys.stderr, flush=True)
            official = _official(channels, window, count, official_version).to(device)
            fresh = _ours_like(official, channels, window, count, interpolation)
            with torch.no_grad():  # as trained: elements all over the window
                low, high = position_bounds(window)
                official.P.uniform_(low, high)
            ours = _ours_like(official, channels, window, count, interpolation)
            dense = nn.Conv2d(channels, channels, window, padding=window // 2, groups=channels, device=device)
            x = torch.randn(BATCH, channels, size, size, device=device, requires_grad=True)
            grad = torch.randn(BATCH, channels, size, size, device=device)
            with torch.no_grad():
                reference = official(x)
                error = ((ours(x) - reference).norm() / reference.norm()).item()
            if error > 1e-4:
                raise SystemExit(f"ours and official differ ({error:.1e}) at C={channels}: not the same layer")
            times = {
                name: best_time_seconds(_step(layer, x, grad), repeats) * 1e3
                for name, layer in (("ours", ours), ("fresh", fresh), ("official", official), ("dense", dense))
            }
            convnext = nn.Conv2d(channels, channels, 7, padding=3, groups=channels, device=device)
            x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            grad_cl = grad.contiguous(memory_format=torch.channels_last)
            times.update({
                f"{name} cl": best_time_seconds(_step(layer, x_cl, grad_cl), repeats) * 1e3
                for name, layer in (("ours", ours), ("fresh", fresh), ("7x7", convnext))
            })
            rows.append((interpolation, window, count, channels, size, times))

    print(f"\nMachine: {machine_description(device)}.\n")
    print(f"Depthwise DCLS layer forward + backward, batch {BATCH}, NCHW float32, {device.type}, "
          f"torch {torch.__version__}, {args.threads} thread(s), best of {repeats}.\n")
    print("Positions spread over the window (as trained) unless marked fresh (as initialised).\n")
    print("| layer | C x H | ours ms | ours, fresh ms | official ms | nn.Conv2d dense ms | vs official | vs nn.Conv2d |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for interpolation, window, count, channels, size, t in rows:
        print(f"| {interpolation} {window}x{window} K={count} | {channels} x {size} | {t['ours']:.1f} | {t['fresh']:.1f} | "
              f"{t['official']:.1f} | {t['dense']:.1f} | {t['official'] / t['ours']:.1f}x | "
              f"{t['dense'] / t['ours']:.1f}x |")
    print("\nInside ConvNeXt-T (channels_last input, as timm's blocks pass it), against its 7x7 layer:\n")
    print("| layer | C x H | ours ms | ours, fresh ms | nn.Conv2d 7x7 ms | 7x7 / ours |")
    print("|---|---|---:|---:|---:|---:|")
    for interpolation, window, count, channels, size, t in rows:
        print(f"| {interpolation} {window}x{window} K={count} | {channels} x {size} | {t['ours cl']:.1f} | "
              f"{t['fresh cl']:.1f} | {t['7x7 cl']:.1f} | {t['7x7 cl'] / t['ours cl']:.2f}x |")
    print("\nDepthwise work of one ConvNeXt-T training step (stages weighted by depths 3, 3, 9, 3):\n")
    for interpolation in dict.fromkeys(r[0] for r in rows):
        stage_times = [r[5] for r in rows if r[0] == interpolation]
        total = {name: sum(d * t[f"{name} cl"] for d, t in zip(DEPTHS, stage_times)) for name in ("ours", "fresh", "7x7")}
        print(f"- {interpolation}: ours {total['ours']:.0f} ms (fresh positions {total['fresh']:.0f} ms) "
              f"vs 7x7 {total['7x7']:.0f} ms: {total['ours'] / total['7x7']:.2f}x the 7x7 time")
    bilinear = [t for r in rows if r[0] == "bilinear" for t in [r[5]]]
    met = all(t["official"] / t["ours"] >= 5 and t["dense"] > t["ours"] for t in bilinear)
    print(f"\nTargets (bilinear 17/34: >= 5x faster than official and faster than nn.Conv2d at every stage): "
          f"{'MET' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
