"""The options of the project's own commands (``export``, ``push``, ``convert``, ``benchmark``).

Only :mod:`argparse` here, nothing that imports torch: ``dcls-zoo <command> --help`` and a wrong
option answer at once, and the command's module (with torch, timm and the Hub client) is imported
only to run it (see :mod:`lightning_modules.commands.main`).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

__all__ = [
    "OneLineArgumentParser",
    "as_flags",
    "one_line_error",
    "add_benchmark_arguments",
    "add_checkpoint_arguments",
    "add_compare_arguments",
    "add_convert_arguments",
    "add_export_arguments",
    "add_push_arguments",
]


_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
_NOT_ACCEPTED = re.compile(r"does not accept option '([^']+)'")
_NO_FILE = re.compile(r"File does not exist: '([^']+)'")
_GIVEN_VALUE = re.compile(r"Given value: (\S+)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')


def _close(word: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Close matches of ``word`` (case-insensitive), then the candidates that end as it does."""
    candidates = sorted(set(candidates))
    by_lower = {c.lower(): c for c in candidates}
    found = [by_lower[c] for c in difflib.get_close_matches(word.lower(), list(by_lower), n=limit, cutoff=0.72)]
    tail = word.rsplit(".", 1)[-1].lstrip("-")
    found += [c for c in candidates if c not in found and len(tail) > 1 and c.endswith("." + tail)]
    return found[:limit]


def one_line_error(prog: str, message: str, options: Iterable[str] = (), classes: Iterable[str] = ()) -> str:
    """An argument parser's complaint as one line that leads with the mistake and offers a fix.

    Args:
        prog: the command (``"dcls-zoo fit"``).
        message: the parser's message (argparse's or jsonargparse's, possibly several lines).
        options: the option strings the command takes (``--trainer.max_epochs``), for a did-you-mean.
        classes: the class names a class-valued option takes, for a did-you-mean.
    """
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
    hint = ""
    if match := _UNRECOGNIZED.search(text) or _NOT_ACCEPTED.search(text):
        given = match.group(1)
        given = given if given.startswith("-") else f"--{given}"
        close = _close(given.split("=", 1)[0], options)
        text = f"unknown option {given}"
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
    elif match := _NO_FILE.search(text):
        missing = Path(match.group(1))
        siblings = [str(missing.with_name(p.name)) for p in missing.parent.glob("*")] if missing.parent.is_dir() else []
        close = _close(str(missing), siblings)
        text = f"config file {missing} does not exist"
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
    elif (match := _GIVEN_VALUE.search(text)) and (key := _PARSER_KEY.search(text)):
        given = match.group(1)
        close = _close(given, classes)
        text = f"--{key.group(1)} {given}: no such class"
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{prog}: error: {text}{hint} ({prog} --help lists the options)"


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (:func:`one_line_error`) and no abbreviated options."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --out-dir is not --out: a typo is an error, not a guess
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        options = [option for action in self._actions for option in action.option_strings]
        print(one_line_error(self.prog, message, options), file=sys.stderr)
        raise SystemExit(2)


#: The library's argument names (in its messages) as the project commands spell them.
_FLAGS = ((re.compile(r"\bema=True\b"), "--ema"), (re.compile(r"\bema=False\b"), "--no-ema"),
          (re.compile(r"\bprefix=\.\.\."), "--prefix PREFIX"), (re.compile(r"\bprefix="), "--prefix "),
          (re.compile(r"\barch=\.\.\."), "--arch ARCH"), (re.compile(r"\barch="), "--arch "),
          (re.compile(r"\bnum_classes=\.\.\."), "--num-classes N"), (re.compile(r"\bnum_classes="), "--num-classes "))


def as_flags(message: str) -> str:
    """A library message with its argument names (``ema=False``, ``prefix=...``) as the command's
    flags (``--no-ema``, ``--prefix``): the library speaks Python, the command line speaks flags."""
    for pattern, flag in _FLAGS:
        message = pattern.sub(flag, message)
    return message


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


def _seed(text: str) -> int:
    """A seed as Lightning's ``seed_everything`` takes it: an integer in [0, 2**32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 2**32 - 1]")
    return value


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, required=True,
                        help="a comparison file, e.g. configs/compare/quick.yaml (fit config, seeds, arms)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default logs/compare/<comparison name>); run again to continue it")
    parser.add_argument("--seeds", type=_seed, nargs="+", default=None,
                        help="override the file's seeds (distinct integers in [0, 2**32 - 1])")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (by name)")
    parser.add_argument("--fit-arg", action="append", default=[], metavar="OPTION",
                        help="one more option for every fit, after the file's fit_args "
                        "(repeatable), e.g. --fit-arg=--trainer.max_epochs=2")
    parser.add_argument("--parallel", type=int, default=1,
                        help="fits at a time, each with its share of the cores (default 1)")
