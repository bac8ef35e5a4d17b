"""``dcls-zoo export``: a Lightning checkpoint -> a Hub-format export directory (no upload).

    dcls-zoo export logs/quickstart/version_0/checkpoints/best.ckpt --out exports/quickstart

The directory (``config.json``, ``model.safetensors``, ``README.md`` model card, ``positions.png``)
loads with ``dcls_zoo.create_model("local-dir:<dir>", pretrained=True)`` and uploads with
``dcls-zoo push <dir> --repo-id ORG/NAME``. Which weights are read: see
:mod:`lightning_modules.checkpoints` (EMA weights by default when the run averaged them).
"""

from __future__ import annotations

import argparse
import sys

from dcls_zoo.errors import DclsZooError

from ..checkpoints import export_checkpoint
from .arguments import as_flags

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """``dcls-zoo export`` (options: :func:`~lightning_modules.commands.arguments.add_export_arguments`)."""
    try:
        directory, notes = export_checkpoint(
            args.checkpoint, args.out, ema=args.ema, arch=args.arch, num_classes=args.num_classes, prefix=args.prefix
        )
    except (DclsZooError, ValueError, OSError) as error:  # bad input, a full disk, weights that cannot be read
        print(f"dcls-zoo export: error: {as_flags(str(error))}", file=sys.stderr)
        return 1
    print(f"read {args.checkpoint}: {notes}")
    print(f"exported to {directory} (load: dcls_zoo.create_model('local-dir:{directory}', pretrained=True))")
    return 0
