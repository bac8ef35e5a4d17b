"""``dcls-zoo convert``: an authors' ConvNeXt-dcls checkpoint -> a dcls-zoo safetensors file.

    dcls-zoo convert convnext_dcls_gauss_tiny_1k_224_ema.pth --arch convnext_dcls_gauss_tiny --out weights/

reads the file safely (weights only), renames facebook keys to timm's, collapses the per-block
copies of each stage's positions, puts the positions in our axis order, checks that the result
loads strictly into ``dcls_zoo.create_model(arch)`` and only then writes a Hub export into the
directory (``config.json``, ``model.safetensors``, ``README.md``: publish it with
``dcls-zoo push weights/ --repo-id ORG/NAME``), or, for ``--out FILE.safetensors``, the weights
alone with their provenance in the safetensors metadata.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dcls_zoo
from dcls_zoo.export_format import WEIGHTS_NAME, provenance, weights_metadata
from dcls_zoo.names import check_model_name
from dcls_zoo.state_dicts import load_state_dict_strict, save_safetensors
from dcls_zoo.weights.official import convert_official

__all__ = ["run"]


def _output_path(out: Path) -> Path:
    return out if out.suffix == ".safetensors" else out / WEIGHTS_NAME


def _fail(message: str) -> int:
    print(f"dcls-zoo convert: error: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """``dcls-zoo convert`` (options: :func:`~lightning_modules.commands.arguments.add_convert_arguments`)."""
    if not args.no_check:
        try:
            check_model_name(args.arch, "arch")
        except ValueError as error:
            return _fail(str(error))
    try:
        conversion = convert_official(
            args.checkpoint, args.arch, key=args.key, source_axis_order=args.source_axis_order
        )
    except (ValueError, FileNotFoundError) as error:
        return _fail(str(error))
    state = conversion.state_dict
    print(f"read {args.checkpoint}")
    print(conversion)

    if args.no_check:
        print("strict load check skipped (--no-check)")
    else:
        head = state.get("head.fc.weight")
        num_classes = args.num_classes if args.num_classes is not None else (head.shape[0] if head is not None else None)
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        try:
            model = dcls_zoo.create_model(args.arch, **kwargs)
            load_state_dict_strict(model, state, what=f"the converted {args.checkpoint.name}")
        except ValueError as error:
            return _fail(f"{error} (arch {args.arch})")
        print(f"checked: loads strictly into {args.arch}" + (f" (num_classes={num_classes})" if num_classes else ""))

    source = {"kind": "the authors' release", "file": args.checkpoint.name, "entry": conversion.source,
              "axis_order": conversion.axis_order or ""}
    if args.out.suffix != ".safetensors" and not args.no_check:
        # A directory gets a whole Hub export (config.json, weights, model card), ready for
        # `dcls-zoo push DIR --repo-id ...` and `create_model("local-dir:DIR", pretrained=True)`.
        card = {"description": f"Converted by dcls-zoo from the authors' release {args.checkpoint.name} "
                               f"(entry {conversion.source!r}, positions {conversion.axis_order or 'hw'}-first "
                               "in the file, row-first here)."}
        directory = dcls_zoo.save_pretrained(model, args.out, model_card=card, source=source)
        print(f"wrote the export {directory}: " + ", ".join(sorted(p.name for p in Path(directory).iterdir())))
        return 0
    path = _output_path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = weights_metadata(provenance(args.arch, {}, source=source))
    # safetensors refuses views and shared storage; after the collapse nothing is shared, and
    # contiguous() covers any view (e.g. a flip of a non-contiguous tensor). The write is atomic.
    tensors = {key: value.detach().contiguous() for key, value in state.items()}
    try:
        save_safetensors(tensors, path, metadata)
    except OSError as error:
        return _fail(f"writing {path} failed ({error}); nothing was written under that name")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {path} ({len(tensors)} tensors, {size / 2**20:.1f} MiB)")
    return 0
