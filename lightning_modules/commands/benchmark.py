"""``dcls-zoo benchmark NAME [ARGS]``: run a script of ``benchmarks/`` (source checkouts only)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["BENCHMARKS_DIR", "run"]

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def run(args: argparse.Namespace) -> int:
    """Run ``benchmarks/<name>.py`` with the remaining arguments; returns its exit status."""
    script = BENCHMARKS_DIR / f"{args.name}.py"
    if not BENCHMARKS_DIR.is_dir():
        print(f"dcls-zoo benchmark: error: {BENCHMARKS_DIR} is missing; benchmarks ship with the source checkout", file=sys.stderr)
        return 1
    if not script.is_file() or args.name == "common":
        names = sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if p.stem != "common")
        print(f"dcls-zoo benchmark: error: no benchmark {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.args])
