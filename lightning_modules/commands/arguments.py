"""The options of the project's own commands (``export``, ``push``, ``convert``, ``benchmark``).

Only :mod:`argparse` here, nothing that imports torch: ``dcls-zoo <command> --help`` and a wrong
option answer at once, and the command's module (with torch, timm and the Hub client) is imported
only to run it (see :mod:`lightning_modules.commands.main`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "add_benchmark_arguments",
    "add_checkpoint_arguments",
    "add_compare_arguments",
    "add_convert_arguments",
    "add_export_arguments",
    "add_push_arguments",
]


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """How to read a Lightning checkpoint (``export`` and ``push``); see :mod:`lightning_modules.checkpoints`."""
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="checkpoint only: use the EMA weights (--ema: required) or the raw ones (--no-ema); "
        "default: EMA when the checkpoint has them",
    )
    parser.add_argument("--arch", default=None, help="checkpoint only: architecture (default: hyper_parameters['arch'])")
    parser.add_argument("--num-classes", type=int, default=None, help="checkpoint only: class count (default: inferred)")
    parser.add_argument(
        "--prefix",
        default=None,
        help="checkpoint only: state_dict prefix of the model (default: detected, e.g. 'model.')",
    )


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a Lightning .ckpt file")
    parser.add_argument("--out", type=Path, required=True, help="the export directory (created)")
    add_checkpoint_arguments(parser)


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="an export directory, or a Lightning .ckpt file")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, ORG/NAME (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint only: export directory (default: <stem>-export beside it)"
    )
    parser.add_argument("--commit-message", default=None, help="commit message on the Hub")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="the authors' .pth file (read with weights_only=True)")
    parser.add_argument("--arch", required=True, help="our architecture, e.g. convnext_dcls_tiny or convnext_dcls_gauss_tiny")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="a .safetensors file (the weights alone), or a directory (a whole Hub export)",
    )
    parser.add_argument(
        "--key",
        default=None,
        help="which entry holds the weights (model or model_ema; default: model_ema if present, else model)",
    )
    parser.add_argument(
        "--source-axis-order",
        choices=("hw", "wh"),
        default=None,
        help="override the arch's known position axis order: hw = H-first (official v0), "
        "wh = W-first (official v1/max/gauss, flipped)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the model used for the strict check (default: the rows of head.fc.weight)",
    )
    parser.add_argument("--no-check", action="store_true", help="write without the strict load check")


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a script of benchmarks/ without .py (construction, conv_layer, model_throughput)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (try --help)")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, required=True,
                        help="a comparison file, e.g. configs/compare/quick.yaml (fit config, seeds, arms)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default logs/compare/<comparison name>); run again to continue it")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the file's seeds")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (by name)")
    parser.add_argument("--fit-arg", action="append", default=[], metavar="OPTION",
                        help="one more option for every fit, after the file's fit_args "
                        "(repeatable), e.g. --fit-arg=--trainer.max_epochs=2")
    parser.add_argument("--parallel", type=int, default=1,
                        help="fits at a time, each with its share of the cores (default 1)")
