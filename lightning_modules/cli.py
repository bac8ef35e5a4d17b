"""The ``dcls-zoo`` command: one entry point for the project's jobs.

Subcommands are registered in :data:`COMMANDS` (name -> (help, add_arguments, run)).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from . import convert_command, demo, push_command

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "demo": ("learn the spacings of a hidden large-kernel convolution (CPU, ~30 s)", demo.add_arguments, demo.run),
    "convert": (
        "convert an authors' ConvNeXt-dcls checkpoint (Zenodo .pth) into a dcls-zoo safetensors file",
        convert_command.add_arguments,
        convert_command.run,
    ),
    "push": (
        "upload an export directory or a Lightning checkpoint to the Hugging Face Hub (safetensors + model card)",
        push_command.add_arguments,
        push_command.run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcls-zoo", description="Dilated Convolution with Learnable Spacings")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
