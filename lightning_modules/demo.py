"""``dcls-zoo demo``: learn the spacings of a hidden large-kernel convolution.

A "teacher" depthwise DCLS layer with bilinear elements scattered over a 15x15 window produces
targets from random images; a Gaussian DCLS "student" starting from the default initialisation
(all elements near the centre) learns weights, positions and widths to reproduce it. Positions
get their own, larger learning rate and are clamped after every step, as in the paper's recipe.
The run prints the loss as it goes and saves a picture of both kernels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from dcls_zoo import Dcls2d


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    parser.add_argument("--channels", type=int, default=8, help="depthwise channels (default: 8)")
    parser.add_argument("--window", type=int, default=15, help="dilated kernel size (default: 15)")
    parser.add_argument("--kernel-count", type=int, default=6, help="elements per kernel (default: 6)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="where the picture goes")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(args.seed)
    channels, count, window = args.channels, args.kernel_count, args.window
    teacher = Dcls2d(channels, channels, count, window, padding="same", groups=channels, version="bilinear")
    with torch.no_grad():
        teacher.P.uniform_(-(window // 2) + 1, window // 2 - 1)
    student = Dcls2d(channels, channels, count, window, padding="same", groups=channels, version="gauss")
    with torch.no_grad():
        student.SIG.fill_(2.0)  # start wide so every element feels the teacher's far taps
    optimizer = torch.optim.Adam(
        [
            {"params": [student.weight, student.bias], "lr": 1e-2},
            {"params": [student.P, student.SIG], "lr": 5e-2},
        ]
    )
    print(f"teacher: {teacher}\nstudent: {student}")
    first_loss = None
    for step in range(1, args.steps + 1):
        images = torch.randn(16, channels, 24, 24)
        with torch.no_grad():
            targets = teacher(images)
        loss = F.mse_loss(student(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        student.clamp_positions_()
        first_loss = loss.item() if first_loss is None else first_loss
        if step == 1 or step % 50 == 0 or step == args.steps:
            print(f"step {step:4d}/{args.steps}  mse {loss.item():.5f}", flush=True)
    with torch.no_grad():
        similarity = F.cosine_similarity(student.kernel().flatten(), teacher.kernel().flatten(), dim=0)
    print(f"mse {first_loss:.4f} -> {loss.item():.4f}; kernel cosine similarity to the teacher {similarity:.3f}")
    picture = _save_kernels(teacher, student, args.out)
    print(f"kernels saved to {picture}")
    return 0


def _save_kernels(teacher: Dcls2d, student: Dcls2d, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(4, teacher.out_channels)
    figure, axes = plt.subplots(2, shown, figsize=(2.2 * shown, 4.6), squeeze=False)
    with torch.no_grad():
        kernels = {"teacher": teacher.kernel()[:, 0], "student": student.kernel()[:, 0]}
    for row, (name, kernel) in enumerate(kernels.items()):
        for channel in range(shown):
            axis = axes[row][channel]
            axis.imshow(kernel[channel].numpy(), cmap="RdBu_r", vmin=-kernel.abs().max(), vmax=kernel.abs().max())
            axis.set_title(f"{name} ch{channel}", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kernels.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
