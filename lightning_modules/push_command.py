"""``dcls-zoo push``: upload an export directory, or a Lightning checkpoint, to the Hugging Face Hub.

    dcls-zoo push exports/convnext_dcls_atto --repo-id me/convnext_dcls_atto.cifar10
    dcls-zoo push lightning_logs/version_0/checkpoints/last.ckpt --repo-id me/run7 [--ema|--no-ema]

An export directory (written by ``dcls_zoo.save_pretrained``; ``config.json`` + ``model.safetensors``,
no pickle) is uploaded as it is. A Lightning checkpoint is read with
``torch.load(weights_only=True)`` (anything that needs full unpickling is refused), its weights are
loaded strictly into ``dcls_zoo.create_model(arch, num_classes=...)``, exported with
``save_pretrained`` (into ``--out``, default ``<checkpoint stem>-export`` beside it, kept) and pushed.

Which weights of a checkpoint:

- ``state_dict`` entries under the LightningModule attribute holding the model: the prefix is
  ``--prefix``, or detected among ``model.``, ``net.``, ``module.`` (other entries are ignored);
- EMA: Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` callback saves the **averaged**
  weights as ``state_dict`` and the raw ones as ``current_model_state`` (with ``averaging_state``);
  a hand-written checkpoint may instead carry ``state_dict_ema`` or ``ema_state_dict`` next to a raw
  ``state_dict``. By default the EMA weights are pushed when present; ``--ema`` requires them,
  ``--no-ema`` pushes the raw weights.
- the architecture: ``--arch``, else ``checkpoint["hyper_parameters"]["arch"]``; extra model
  arguments from ``hyper_parameters["model_kwargs"]`` (a dict) when present; the class count from
  ``--num-classes``, ``hyper_parameters["num_classes"]`` or the classifier weight's rows.

The token comes from ``HF_TOKEN`` or a saved ``hf auth login`` and is checked before any work.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIXES = ("model.", "net.", "module.")
EMA_KEYS = ("state_dict_ema", "ema_state_dict")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="an export directory, or a Lightning .ckpt file")
    parser.add_argument("--repo-id", required=True, help="the Hub repo, ORG/NAME (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="checkpoint only: push the EMA weights (--ema: required) or the raw ones (--no-ema); "
        "default: EMA when the checkpoint has them",
    )
    parser.add_argument("--arch", default=None, help="checkpoint only: architecture (default: hyper_parameters['arch'])")
    parser.add_argument("--num-classes", type=int, default=None, help="checkpoint only: class count (default: inferred)")
    parser.add_argument(
        "--prefix",
        default=None,
        help=f"checkpoint only: state_dict prefix of the model (default: detected among {', '.join(PREFIXES)})",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint only: export directory (default: <stem>-export beside it)"
    )
    parser.add_argument("--commit-message", default=None, help="commit message on the Hub")


def _fail(message: str) -> int:
    print(f"dcls-zoo push: error: {message}", file=sys.stderr)
    return 1


def load_checkpoint(path: Path) -> Mapping[str, Any]:
    """``torch.load(path, weights_only=True)``, or a ValueError saying why it was refused."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"refusing to load {path}: it holds objects that torch.load(weights_only=True) will not unpickle "
            f"({reason}). Only tensors and plain containers are read; re-save the checkpoint without them "
            "(e.g. torch.save({'state_dict': ..., 'hyper_parameters': {'arch': ...}})) or export from the "
            "training process with dcls_zoo.save_pretrained"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot read {path} as a torch checkpoint: {error}") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"{path} is not a Lightning checkpoint: expected a dict with a 'state_dict' entry")
    return checkpoint


def select_weights(checkpoint: Mapping[str, Any], ema: bool | None) -> tuple[Mapping[str, Any], str]:
    """The state dict to push and a description of where it came from (see the module docstring)."""
    raw, averaged, where = checkpoint["state_dict"], None, ""
    if isinstance(checkpoint.get("current_model_state"), Mapping):
        raw, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
        where = "Lightning WeightAveraging (state_dict; raw weights in current_model_state)"
    else:
        for key in EMA_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                averaged, where = checkpoint[key], key
                break
    if ema is False or (ema is None and averaged is None):
        source = "current_model_state" if averaged is not None and "current_model_state" in checkpoint else "state_dict"
        return raw, f"raw weights ({source})"
    if averaged is None:
        raise ValueError(
            "--ema: the checkpoint has no EMA weights (no WeightAveraging current_model_state, "
            f"no {' / '.join(EMA_KEYS)}); use --no-ema"
        )
    return averaged, f"EMA weights from {where}"


def strip_prefix(state: Mapping[str, Any], prefix: str | None) -> tuple[dict[str, Any], str, int]:
    """Keys under ``prefix`` (detected when None) without it; also the prefix and the count ignored."""
    if prefix is None:
        counts = {p: sum(k.startswith(p) for k in state) for p in PREFIXES}
        best = max(counts, key=counts.get)
        prefix = best if counts[best] else ""
    kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not kept:
        raise ValueError(f"no state_dict entry starts with {prefix!r}; pass --prefix")
    return kept, prefix, len(state) - len(kept)


def model_from_checkpoint(checkpoint: Mapping[str, Any], args: argparse.Namespace):
    """Build the architecture and load the selected weights strictly; returns (model, notes)."""
    import timm

    import dcls_zoo
    from dcls_zoo.convert import load_checkpoint_strict

    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):
        hparams = {}
    arch = args.arch or hparams.get("arch")
    if not arch:
        raise ValueError("the checkpoint names no architecture (hyper_parameters['arch']); pass --arch")
    state, description = select_weights(checkpoint, args.ema)
    state, prefix, ignored = strip_prefix(state, args.prefix)
    kwargs = dict(hparams.get("model_kwargs") or {}) if isinstance(hparams.get("model_kwargs"), Mapping) else {}
    num_classes = args.num_classes or hparams.get("num_classes")
    if num_classes is None:
        classifier = timm.models.get_pretrained_cfg(arch.split(".", 1)[0])
        head = state.get(f"{classifier.classifier}.weight") if classifier and classifier.classifier else None
        num_classes = head.shape[0] if head is not None else None
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    model = dcls_zoo.create_model(arch, **kwargs)
    try:
        load_checkpoint_strict(model, state, what=f"the checkpoint's {description}")
    except ValueError as error:
        raise ValueError(f"{error} (arch {arch}, {kwargs})") from error
    notes = f"{description}, prefix {prefix!r}" + (f", {ignored} other entries ignored" if ignored else "")
    return model.eval(), notes


def run(args: argparse.Namespace) -> int:
    from dcls_zoo.hub import PushError, _require_token, push_to_hub, upload_export

    try:
        token = _require_token(None)
    except ValueError as error:
        return _fail(str(error))
    source: Path = args.source
    common = dict(revision=args.revision, private=args.private, token=token, commit_message=args.commit_message)
    try:
        if source.is_dir():
            result = upload_export(source, args.repo_id, **common)
        elif source.is_file():
            checkpoint = load_checkpoint(source)
            model, notes = model_from_checkpoint(checkpoint, args)
            print(f"read {source}: {notes}; loads strictly into {model.pretrained_cfg['architecture']}")
            out = args.out if args.out is not None else source.with_name(f"{source.stem}-export")
            result = push_to_hub(model, args.repo_id, local_dir=out, **common)
        else:
            return _fail(f"{source} does not exist")
    except PushError as error:
        return _fail(str(error))
    except ValueError as error:
        return _fail(str(error))
    print(f"exported to {result.local_dir}")
    print(f"pushed to {result.repo_id}@{result.revision}: {result.commit_url or result.commit_oid}")
    return 0
