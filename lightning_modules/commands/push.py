"""``dcls-zoo push``: upload an export directory, or a Lightning checkpoint, to the Hugging Face Hub.

    dcls-zoo push exports/convnext_dcls_atto --repo-id me/convnext_dcls_atto.cifar10
    dcls-zoo push lightning_logs/version_0/checkpoints/last.ckpt --repo-id me/run7 [--ema|--no-ema]

An export directory (written by ``dcls_zoo.save_pretrained``; ``config.json`` + ``model.safetensors``,
no pickle) is uploaded as it is. A Lightning checkpoint is read with
``torch.load(weights_only=True)`` (anything that needs full unpickling is refused), its weights are
loaded strictly into ``dcls_zoo.create_model(arch, num_classes=...)``, exported with
``save_pretrained`` (into ``--out``, default ``<checkpoint stem>-export`` beside it, kept) and pushed.

Which weights of a checkpoint (EMA by default, the model prefix, the architecture): see
:mod:`lightning_modules.checkpoints`.

The token comes from ``HF_TOKEN`` or a saved ``hf auth login`` and is checked before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcls_zoo.errors import DclsZooError
from dcls_zoo.hub import require_token, upload_export

from ..checkpoints import export_checkpoint
from .arguments import as_flags

__all__ = ["run"]


def _fail(message: str) -> int:
    print(f"dcls-zoo push: error: {as_flags(message)}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """``dcls-zoo push`` (options: :func:`~lightning_modules.commands.arguments.add_push_arguments`)."""
    try:
        token = require_token(None)
    except ValueError as error:
        return _fail(str(error))
    source: Path = args.source
    common = dict(revision=args.revision, private=args.private, token=token, commit_message=args.commit_message)
    try:
        if source.is_dir():
            result = upload_export(source, args.repo_id, **common)
        elif source.is_file():
            out = args.out if args.out is not None else source.with_name(f"{source.stem}-export")
            directory, notes = export_checkpoint(
                source, out, ema=args.ema, arch=args.arch, num_classes=args.num_classes, prefix=args.prefix,
                repo_id=args.repo_id,
            )
            print(f"read {source}: {notes}; exported to {directory}")
            result = upload_export(directory, args.repo_id, **common)
        else:
            return _fail(f"{source} does not exist")
    except (DclsZooError, ValueError, OSError) as error:  # a failed upload, a bad or tampered export, a full disk
        return _fail(str(error))
    print(f"exported to {result.local_dir}")
    print(f"pushed to {result.repo_id}@{result.revision}: {result.commit_url or result.commit_oid}")
    return 0
