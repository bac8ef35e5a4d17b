"""Kernel construction: ours (dcls_zoo.construct) vs the official ``dcls`` 0.1.1 package.

For every depthwise DCLS layer shape of ConvNeXt-T (C = 96, 192, 384, 768; C_in / groups = 1)
this measures one forward + backward of the dense-kernel construction, side by side:

* bilinear, dilated kernel 17x17, 34 elements: official ``"v0"`` (what ConvNeXt-dcls uses) and
  official ``"v1"``, both against our bilinear construction;
* Gaussian, dilated kernel 23x23, 26 elements: official ``"gauss"`` against ours.

Before timing, each case checks that both produce the same kernel and the same gradients, so the
two sides cannot be computing different things. Timing is the best of ``--repeats`` repeats
(single-threaded by default); peak memory is the peak of live tensor bytes during one
forward + backward, inputs excluded (see ``benchmarks/common.py``). The Markdown table goes to
stdout, progress to stderr.

    python benchmarks/construction.py [--quick] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# The script is run from a checkout, so make the repository's package importable without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import MIB, best_time_seconds, check_memory_tracker, machine_description, peak_memory_bytes  # noqa: E402
from DCLS.construct.modules import ConstructKernel2d  # noqa: E402

from dcls_zoo.construct import construct_kernel  # noqa: E402

CHANNELS = (96, 192, 384, 768)  # ConvNeXt-T stage widths
SPEEDUP_TARGET = 20.0
MEMORY_TARGET = 10.0
# max |ours - official| / max |official|, for the kernel and for each gradient
TOLERANCE = 1e-4

Builder = Callable[[Tensor, Tensor, Tensor | None], Tensor]


@dataclass(frozen=True)
class Case:
    """One benchmark shape: an official version, its window and element count, and a width C."""

    version: str  # official version name; ours accepts the same names
    dilated_kernel_size: int
    kernel_count: int
    channels: int

    @property
    def has_sigma(self) -> bool:
        return self.version in ("gauss", "max")

    @property
    def official_width_first(self) -> bool:
        """Official v1/max/gauss store the width offset in P[0]; v0 and ours store the row first."""
        return self.version != "v0"

    @property
    def label(self) -> str:
        s = self.dilated_kernel_size
        return f"{self.version} {s}x{s} K={self.kernel_count}"


@dataclass
class Result:
    """Measurements of one case."""

    case: Case
    official_s: float
    ours_s: float
    official_bytes: int
    ours_bytes: int
    max_rel_err: float

    @property
    def speedup(self) -> float:
        return self.official_s / self.ours_s

    @property
    def memory_ratio(self) -> float:
        return self.official_bytes / self.ours_bytes


def all_cases() -> list[Case]:
    """Every ConvNeXt-T stage width for official v0, v1 (17x17, 34) and gauss (23x23, 26)."""
    configs = [("v0", 17, 34), ("v1", 17, 34), ("gauss", 23, 26)]
    return [Case(v, s, k, c) for v, s, k in configs for c in CHANNELS]


def make_inputs(case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Official-layout leaf parameters W, P, SIG and the fixed tensor the loss is weighted by.

    Positions are spread over the window as after training (official init, N(0, 0.5), keeps them
    all near the centre) and clamped strictly inside it, so no element sits on a window edge or
    an integer where bilinear interpolation is not differentiable.
    """
    generator = torch.Generator().manual_seed(seed)
    c, k, s = case.channels, case.kernel_count, case.dilated_kernel_size
    lim = s // 2
    weight = torch.randn(c, 1, k, generator=generator) / math.sqrt(k)
    positions = torch.randn(2, c, 1, k, generator=generator) * (lim / 2)
    positions = positions.clamp(-lim + 1e-3, lim - 1e-3)
    sigmas = torch.full((2, c, 1, k), 0.23) if case.has_sigma else None
    probe = torch.randn(c, 1, s, s, generator=generator)
    for tensor in (weight, positions, sigmas):
        if tensor is not None:
            tensor.requires_grad_(True)
    return weight, positions, sigmas, probe


def official_builder(case: Case) -> Builder:
    """The official construction of ``case``, called as ``build(W, P, SIG)``."""
    s = case.dilated_kernel_size
    c = case.channels  # depthwise: out = in = groups
    module = ConstructKernel2d(c, c, c, case.kernel_count, (s, s), case.version)
    return module.forward


def ours_builder(case: Case) -> Builder:
    """Our construction of ``case``, taking the official parameter layout.

    Converting the layout (a flip of the axis dimension for width-first versions) is part of
    what a drop-in replacement would do, so it is included in the measurement; it is a copy of
    the small (2, C, 1, K) parameters.
    """
    s = case.dilated_kernel_size

    def build(weight: Tensor, positions: Tensor, sigmas: Tensor | None) -> Tensor:
        if case.official_width_first:
            positions = positions.flip(0)
            sigmas = sigmas.flip(0) if sigmas is not None else None
        return construct_kernel(weight, positions, sigmas, (s, s), case.version)

    return build


def forward_backward(
    build: Builder, weight: Tensor, positions: Tensor, sigmas: Tensor | None, probe: Tensor
) -> Tensor:
    """Build the kernel and backpropagate ``sum(kernel * probe)``; returns the (detached) kernel."""
    leaves = [t for t in (weight, positions, sigmas) if t is not None]
    for leaf in leaves:
        leaf.grad = None  # fresh gradients each call: no accumulation op in the measurement
    kernel = build(weight, positions, sigmas)
    (kernel * probe).sum().backward()
    return kernel.detach()


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check_agreement(case: Case, official: Builder, ours: Builder, inputs: tuple) -> float:
    """Max relative error between the two kernels and between all their gradients.

    Raises:
        AssertionError: if any of them differs by more than ``TOLERANCE``.
    """
    weight, positions, sigmas, probe = inputs
    leaves = [t for t in (weight, positions, sigmas) if t is not None]
    kernel_official = forward_backward(official, *inputs)
    grads_official = [leaf.grad.clone() for leaf in leaves]
    kernel_ours = forward_backward(ours, *inputs)
    grads_ours = [leaf.grad.clone() for leaf in leaves]
    errors = {"kernel": relative_error(kernel_ours, kernel_official)}
    for name, got, want in zip(("dW", "dP", "dSIG"), grads_ours, grads_official):
        errors[name] = relative_error(got, want)
    worst = max(errors.values())
    assert worst < TOLERANCE, f"{case.label} C={case.channels}: ours != official, {errors}"
    return worst


def run_case(case: Case, repeats: int, warmup: int) -> Result:
    """Check agreement, then time and measure memory of both constructions for ``case``."""
    inputs = make_inputs(case)
    official, ours = official_builder(case), ours_builder(case)
    # also the warm-up of the official module, which builds its index grids on first call
    max_rel_err = check_agreement(case, official, ours, inputs)
    seconds, peak = [], []
    for build in (official, ours):
        step = lambda build=build: forward_backward(build, *inputs)  # noqa: E731
        seconds.append(best_time_seconds(step, repeats=repeats, warmup=warmup))
        peak.append(peak_memory_bytes(step))
    return Result(case, seconds[0], seconds[1], peak[0], peak[1], max_rel_err)


def markdown_table(results: list[Result]) -> str:
    """The results as a Markdown table with speed and memory ratios."""
    lines = [
        "| case | C | official ms | ours ms | speedup | official peak MiB | ours peak MiB "
        "| memory ratio | max rel. err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.case.label} | {r.case.channels} | {r.official_s * 1e3:.2f} | {r.ours_s * 1e3:.3f} "
            f"| {r.speedup:.1f}x | {r.official_bytes / MIB:.1f} | {r.ours_bytes / MIB:.2f} "
            f"| {r.memory_ratio:.1f}x | {r.max_rel_err:.1e} |"
        )
    return "\n".join(lines)


def verdict(results: list[Result]) -> str:
    """One line saying whether the speed and memory targets hold at every shape."""
    min_speedup = min(r.speedup for r in results)
    min_memory = min(r.memory_ratio for r in results)
    met = min_speedup >= SPEEDUP_TARGET and min_memory >= MEMORY_TARGET
    return (
        f"Targets (>= {SPEEDUP_TARGET:g}x faster and >= {MEMORY_TARGET:g}x less peak memory "
        f"at every shape): {'MET' if met else 'NOT MET'} "
        f"(min speedup {min_speedup:.1f}x, min memory ratio {min_memory:.1f}x)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per case (default 7, quick 2)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    warmup = 1
    torch.set_num_threads(args.threads)
    check_memory_tracker()
    setup = f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of {repeats}"
    print(setup, file=sys.stderr)
    results = []
    for case in all_cases():
        print(f"  {case.label} C={case.channels} ...", file=sys.stderr, end=" ", flush=True)
        result = run_case(case, repeats, warmup)
        summary = f"{result.speedup:.1f}x faster, {result.memory_ratio:.1f}x less memory"
        print(summary, file=sys.stderr)
        results.append(result)
    print(
        f"Machine: {machine_description()}.\n\n"
        "Kernel construction, forward + backward, depthwise (C_in/groups = 1), CPU, "
        f"{setup}; official = dcls 0.1.1 ConstructKernel2d.\n"
    )
    print(markdown_table(results))
    print()
    print(verdict(results))


if __name__ == "__main__":
    main()
