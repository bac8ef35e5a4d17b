"""The ``dcls-zoo`` entry point: a registry of commands, each imported only when it runs.

    dcls-zoo fit -c configs/quickstart.yaml             # train (LightningCLI; --help for every option)
    dcls-zoo fit -c configs/convnext_dcls_tiny_in1k.yaml -c configs/presets/gpu_bf16.yaml
    dcls-zoo test|validate|predict -c CONFIG --ckpt_path CKPT
    dcls-zoo compare -c configs/compare/quick.yaml      # arms x seeds of one recipe -> table + plot
    dcls-zoo export CKPT --out DIR                      # Lightning checkpoint -> Hub-format export
    dcls-zoo push DIR_OR_CKPT --repo-id ORG/NAME        # upload to the Hugging Face Hub
    dcls-zoo convert FILE --arch ARCH --out DIR         # the authors' released checkpoints
    dcls-zoo benchmark NAME [ARGS]                      # the scripts in benchmarks/ (source checkout)

Why a registry of ``"module:function"`` names rather than imports: importing torch, timm and
Lightning takes seconds, so this module imports none of them. ``dcls-zoo --help``, ``--version``
and the project commands' ``--help`` and option errors answer at once; a command's module is
imported when the command runs (the way console-script entry points are resolved).
``python -m lightning_modules`` is the same tool.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import arguments

__all__ = ["COMMANDS", "Command", "main"]


@dataclass(frozen=True)
class Command:
    """One ``dcls-zoo`` subcommand.

    Attributes:
        help: the one-line description ``dcls-zoo --help`` shows.
        runner: ``"module:function"`` that runs it, imported only then. A project command's runner
            takes the parsed :class:`argparse.Namespace`; a Lightning one takes the whole argument
            list (``None``: ``sys.argv``, which Lightning needs to relaunch DDP ranks).
        add_arguments: the options of a project command (``None``: LightningCLI parses them).
    """

    help: str
    runner: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    @property
    def is_lightning(self) -> bool:
        return self.add_arguments is None

    def load_runner(self) -> Callable[..., int]:
        module_name, function = self.runner.split(":")
        return getattr(importlib.import_module(module_name), function)


_TRAIN = "lightning_modules.commands.train:run"

COMMANDS: dict[str, Command] = {
    "fit": Command("train (and validate) a model: dcls-zoo fit -c configs/quickstart.yaml", _TRAIN),
    "validate": Command("evaluate on the validation set (--ckpt_path to pick the weights)", _TRAIN),
    "test": Command("evaluate on the test set (--ckpt_path; results go into the checkpoint's run folder)", _TRAIN),
    "predict": Command("predict with a model (--ckpt_path): writes predictions.csv with named top-5", _TRAIN),
    "compare": Command(
        "train several architectures with one recipe over seeds: table + plot (configs/compare/*.yaml)",
        "lightning_modules.commands.compare:run",
        arguments.add_compare_arguments,
    ),
    "export": Command(
        "write a Lightning checkpoint as a Hub-format export directory (safetensors + config + model card)",
        "lightning_modules.commands.export:run",
        arguments.add_export_arguments,
    ),
    "push": Command(
        "upload an export directory or a Lightning checkpoint to the Hugging Face Hub (safetensors + model card)",
        "lightning_modules.commands.push:run",
        arguments.add_push_arguments,
    ),
    "convert": Command(
        "convert an authors' ConvNeXt-dcls checkpoint (Zenodo .pth) into a dcls-zoo export",
        "lightning_modules.commands.convert:run",
        arguments.add_convert_arguments,
    ),
    "benchmark": Command(
        "run a benchmark script of benchmarks/ (prints Markdown tables)",
        "lightning_modules.commands.benchmark:run",
        arguments.add_benchmark_arguments,
    ),
}


def _help_text() -> str:
    lines = ["usage: dcls-zoo COMMAND [options]   (dcls-zoo COMMAND --help for a command's options)", ""]
    for title, lightning in (("training (LightningCLI; configs in configs/):", True), ("comparisons, models and the Hub:", False)):
        lines.append(title)
        lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items() if command.is_lightning == lightning]
        lines.append("")
    lines.append("  -V, --version  the versions of dcls-zoo, torch, timm and lightning")
    return "\n".join(lines)


def _version_text() -> str:
    # From the installed distributions' metadata: no import of the (slow) packages themselves.
    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    stack = ", ".join(f"{name} {version(name)}" for name in ("torch", "timm", "lightning"))
    return f"dcls-zoo {version('dcls-zoo')} ({stack})"


def _print(text: str) -> None:
    """Print to stdout; a reader that stops early (``dcls-zoo --help | head -1``) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dcls-zoo`` and ``python -m lightning_modules``; returns the exit status.

    Args:
        argv: the arguments after ``dcls-zoo`` (``None``: ``sys.argv[1:]``).
    """
    arguments_given = list(sys.argv[1:] if argv is None else argv)
    if not arguments_given or arguments_given[0] in ("-h", "--help"):
        _print(_help_text())
        return 0 if arguments_given else 2
    if arguments_given[0] in ("-V", "--version"):
        _print(_version_text())
        return 0
    name = arguments_given[0]
    command = COMMANDS.get(name)
    if command is None:
        print(f"dcls-zoo: error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (dcls-zoo --help)",
              file=sys.stderr)
        return 2
    if command.is_lightning:
        run_lightning: Callable[[list[str] | None], int] = command.load_runner()
        return run_lightning(None if argv is None else arguments_given)
    parser = arguments.OneLineArgumentParser(prog=f"dcls-zoo {name}", description=command.help)
    command.add_arguments(parser)
    parsed: Any = parser.parse_args(arguments_given[1:])  # option errors: exit 2 before any heavy import
    return command.load_runner()(parsed)
