"""``dcls-zoo export``: a Lightning checkpoint -> a Hub-format export directory (no upload).

    dcls-zoo export logs/quickstart/version_0/checkpoints/best.ckpt --out exports/quickstart

The directory (``config.json``, ``model.safetensors``, ``README.md`` model card, ``positions.png``)
loads with ``dcls_zoo.create_model("local-dir:<dir>", pretrained=True)`` and uploads with
``dcls-zoo push <dir> --repo-id ORG/NAME``. Which weights are read: see
:mod:`lightning_modules.checkpoints` (EMA weights by default when the run averaged them).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoints import PREFIXES, export_metadata, load_checkpoint, model_from_checkpoint

__all__ = ["add_arguments", "add_checkpoint_arguments", "export_checkpoint", "run"]


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read a Lightning checkpoint (shared with ``dcls-zoo push``)."""
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
        help=f"checkpoint only: state_dict prefix of the model (default: detected among {', '.join(PREFIXES)})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a Lightning .ckpt file")
    parser.add_argument("--out", type=Path, required=True, help="the export directory (created)")
    add_checkpoint_arguments(parser)


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ema: bool | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    prefix: str | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
) -> tuple[Path, str]:
    """Write the checkpoint's model as a Hub export; returns ``(directory, weights description)``.

    The label names, the evaluation preprocessing (``data_config``), the dataset and the metrics
    default to what the training run recorded in the checkpoint
    (:data:`~lightning_modules.checkpoints.EXPORT_KEY`), so a standalone export reloads exactly
    as the run evaluated it; given values take precedence. ``repo_id`` names the Hub repo in the
    card's usage snippet (default: a ``local-dir:`` snippet).
    """
    from dcls_zoo.hub import save_pretrained

    checkpoint = load_checkpoint(checkpoint_path)
    model, notes = model_from_checkpoint(checkpoint, arch=arch, num_classes=num_classes, ema=ema, prefix=prefix)
    recorded = export_metadata(checkpoint)
    card = dict(model_card or {})
    metrics = {**dict(recorded.get("metrics") or {}), **dict(card.get("metrics") or {})}
    if metrics:
        card["metrics"] = metrics
    if recorded.get("dataset") and not card.get("dataset"):
        card["dataset"] = recorded["dataset"]
    card.setdefault("training", f"trained with dcls-zoo (Lightning); exported from {Path(checkpoint_path).name}: {notes}")
    directory = save_pretrained(
        model,
        out_dir,
        label_names=label_names if label_names is not None else recorded.get("label_names"),
        data_config=data_config if data_config is not None else recorded.get("data_config"),
        model_card=card,
        repo_id=repo_id,
    )
    return directory, notes


def run(args: argparse.Namespace) -> int:
    try:
        directory, notes = export_checkpoint(
            args.checkpoint, args.out, ema=args.ema, arch=args.arch, num_classes=args.num_classes, prefix=args.prefix
        )
    except (ValueError, OSError, RuntimeError) as error:  # bad input, a full disk, weights that cannot be read
        print(f"dcls-zoo export: error: {error}", file=sys.stderr)
        return 1
    print(f"read {args.checkpoint}: {notes}")
    print(f"exported to {directory} (load: dcls_zoo.create_model('local-dir:{directory}', pretrained=True))")
    return 0
