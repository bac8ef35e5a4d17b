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

from .export_command import add_checkpoint_arguments, export_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="an export directory, or a Lightning .ckpt file")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, ORG/NAME (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint only: export directory (default: <stem>-export beside it)"
    )
    parser.add_argument("--commit-message", default=None, help="commit message on the Hub")


def _fail(message: str) -> int:
    print(f"dcls-zoo push: error: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from dcls_zoo.hub import PushError, require_token, upload_export

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
    except PushError as error:
        return _fail(str(error))
    except ValueError as error:
        return _fail(str(error))
    print(f"exported to {result.local_dir}")
    print(f"pushed to {result.repo_id}@{result.revision}: {result.commit_url or result.commit_oid}")
    return 0
