"""The model card of an export: DCLS settings and the card text.

:func:`dcls_settings` summarises a model's DCLS configuration (for the card and the weights'
metadata); :func:`render_card` writes
``README.md``: YAML front matter for the Hub, model details, the preprocessing and the one call that
reproduces it, DCLS settings, usage, metrics, training, citation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..export_format import POSITIONS_NAME
from ..positions import dcls_layers
from ..shared import SHARED_ATTRIBUTE, SharedPositions

__all__ = ["CARD_KEYS", "CITATION", "dcls_settings", "render_card"]

CITATION = """@inproceedings{khalfaouihassani2023dilated,
  title     = {Dilated convolution with learnable spacings},
  author    = {Khalfaoui-Hassani, Ismail and Pellegrini, Thomas and Masquelier, Timoth{\\'e}e},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}"""

# Keys a ``model_card`` dict may hold (anything else is a typo and raises).
CARD_KEYS = {
    "model_name": "title of the card (default: the repo name or the architecture)",
    "description": "free text under the title",
    "dataset": "training dataset: a Hub dataset id or a list of them (front matter `datasets`)",
    "metrics": "mapping metric -> value, e.g. {'top-1 (ImageNet-1k val)': 82.5}",
    "training": "the training recipe: text, or a mapping setting -> value",
    "limitations": "what the numbers do not show: text, or a list of sentences (a Limitations section)",
    "license": "SPDX-like license id for the front matter (default: the architecture's, else mit)",
    "tags": "extra Hub tags",
    "citation": "extra BibTeX, cited after the DCLS paper",
}


def _size(window: Sequence[int]) -> str:
    return "x".join(str(s) for s in window)


def dcls_settings(model: nn.Module) -> dict[str, Any]:
    """The model's DCLS configuration, for the card and the weights' metadata (``{}`` without DCLS).

    Keys: ``layers`` (count), ``window`` (e.g. ``"17x17"``; several joined by ``", "`` in stage order),
    ``kernel_count``, ``interpolation``, ``learned_axes``, ``sharing`` (a sentence),
    ``position_groups`` (count), and from ``model.dclsify_report`` when present
    ``converted_parameters`` (``"before -> after"``) and ``skipped`` (count).
    """
    layers = dcls_layers(model)
    if not layers:
        return {}
    shared = [name for name, m in model.named_modules() if isinstance(m, SharedPositions)]
    own = [name for name, m in layers if m.shared_positions is None]
    if shared and not own:
        report = getattr(model, "dclsify_report", None)
        per_stage = report is not None and all(c.shared_group for c in report.converted)
        unit = "per stage" if per_stage else "per group"
        sharing = f"positions shared {unit}: {len(shared)} groups for {len(layers)} layers, stored once each"
    elif shared:
        sharing = f"{len(shared)} shared position groups, {len(own)} layers with their own positions"
    else:
        sharing = "none (every layer learns its own positions)"
    settings: dict[str, Any] = {
        "layers": len(layers),
        # in the layers' order (stage by stage), each distinct value once
        "window": ", ".join(dict.fromkeys(_size(m.dilated_kernel_size) for _, m in layers)),
        "kernel_count": ", ".join(dict.fromkeys(str(m.kernel_count) for _, m in layers)),
        "interpolation": ", ".join(sorted({m.version for _, m in layers})),
        "learned_axes": ", ".join(sorted({str(tuple(m.learned_axes)) for _, m in layers})),
        "sharing": sharing,
        "position_groups": len(shared) + len(own),
    }
    report = getattr(model, "dclsify_report", None)
    if report is not None:
        settings["converted_parameters"] = f"{report.params_before:,} -> {report.params_after:,}"
        settings["skipped"] = len(report.skipped)
    return settings


def _transform_phrase(cfg: Mapping[str, Any]) -> str:
    """timm's evaluation transform for ``cfg`` in words (its default crop mode, "center")."""
    import math

    size = cfg.get("input_size") or ()
    if len(size) != 3:
        return "not recorded"
    crop_pct = cfg.get("crop_pct") or 0.875
    side = math.floor(size[-1] / crop_pct)
    resize = f"resize the short side to {side} px ({cfg.get('interpolation', 'bicubic')})"
    if cfg.get("crop_mode", "center") != "center":
        return f"crop mode {cfg['crop_mode']!r}, crop_pct {crop_pct:g}"
    fit = "centre-crop" if side >= size[-1] else "zero-pad (centred)"
    return f"{resize}, {fit} to {size[-2]}x{size[-1]}, normalise with the mean / std below (crop_pct {crop_pct:.4g})"


def _yaml_list(key: str, items: Sequence[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(str(item))}" for item in items]


def _table(rows: Mapping[str, Any]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows.items()]
    return lines


def render_card(
    model: nn.Module,
    config: Mapping[str, Any],
    settings: Mapping[str, Any],
    card: Mapping[str, Any],
    has_picture: bool,
    repo_id: str | None,
    directory: Path,
) -> str:
    architecture = config["architecture"]
    pretrained_cfg = config.get("pretrained_cfg", {})
    license_id = card.get("license") or pretrained_cfg.get("license") or "mit"
    datasets = card.get("dataset")
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    tags = ["image-classification", "timm", "dcls", "dcls-zoo", *card.get("tags", [])]
    tags = list(dict.fromkeys(tags))

    front = ["---", f"license: {json.dumps(str(license_id))}", "library_name: timm",
             "pipeline_tag: image-classification", *_yaml_list("tags", tags)]
    if datasets:
        front += _yaml_list("datasets", datasets)
    front.append("---")

    name = card.get("model_name") or (repo_id.split("/")[-1] if repo_id else architecture)
    lines = [*front, "", f"# {name}", ""]
    lines.append(card.get("description") or (
        f"A `{architecture}` image classifier with DCLS convolutions (Dilated Convolution with Learnable "
        "Spacings), exported by dcls-zoo in timm's format."
    ))
    parameters = sum(p.numel() for p in model.parameters())
    details = {
        "architecture": f"`{architecture}`",
        "model arguments": f"`{json.dumps(config.get('model_args', {}), sort_keys=True)}`",
        "parameters": f"{parameters / 1e6:.2f}M ({parameters:,})",
        "classes": config.get("num_classes"),
        "input size": "x".join(str(s) for s in pretrained_cfg.get("input_size", ())),
        "evaluation transform": _transform_phrase(pretrained_cfg),
        "mean / std": f"{pretrained_cfg.get('mean')} / {pretrained_cfg.get('std')}",
        "labels": "in `config.json` (`label_names`)" if config.get("label_names") else "not recorded",
    }
    lines += ["", "## Model details", "", *_table(details)]

    lines += ["", "## DCLS settings", ""]
    if settings:
        rows = {
            "DCLS layers": settings["layers"],
            "window (dilated kernel size)": settings["window"],
            "elements per kernel (kernel count)": settings["kernel_count"],
            "interpolation": settings["interpolation"],
            "learned axes": settings["learned_axes"],
            "sharing": settings["sharing"],
        }
        if "converted_parameters" in settings:
            rows["parameters of the converted layers"] = settings["converted_parameters"]
        lines += _table(rows)
        lines += ["", f"Positions are stored once per group (`...{SHARED_ATTRIBUTE}.<role>.P`); call "
                  "`dcls_zoo.clamp_model_positions_(model)` after every optimizer step when fine-tuning."]
    else:
        lines.append("This model has no DCLS layer (a baseline of the zoo).")
    if has_picture:
        lines += ["", "### Learned positions", "",
                  f"![learned positions, one panel per position group]({POSITIONS_NAME})", "",
                  "Where the kernel elements sit in their windows: the density of elements at (column, row) = "
                  "(`P[1]`, `P[0]`), one panel (and colour scale) per position group."]

    source = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{directory.resolve()}"
    channels = (pretrained_cfg.get("input_size") or (3,))[0]
    mode = {1: "L", 3: "RGB"}.get(channels)
    lines += ["", "## Usage", "",
              "The evaluation transform the model was tested with is recorded in `config.json`; timm's data "
              "config rebuilds it exactly:", "",
              "```python", "import dcls_zoo  # registers the DCLS architectures in timm", "import timm", "import torch",
              "from PIL import Image", "", f"model = dcls_zoo.create_model({source!r}, pretrained=True).eval()",
              f"# (sha256-checked; timm.create_model({source!r}, pretrained=True) loads it unchecked)",
              "data_config = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**data_config)",
              'labels = model.pretrained_cfg.get("label_names")', "",
              "def predict(image: Image.Image, k: int = 3) -> list[tuple[str, float]]:",
              f'    x = transform(image.convert("{mode}")).unsqueeze(0)' if mode else "    x = transform(image).unsqueeze(0)",
              "    with torch.no_grad():",
              "        probabilities = model(x).softmax(-1)[0]",
              "    top = probabilities.topk(k)",
              "    return [(labels[i] if labels else str(i), p) for p, i in zip(top.values.tolist(), top.indices.tolist())]",
              "```"]

    if datasets:
        lines += ["", "## Dataset", "", ", ".join(f"`{d}`" for d in datasets)]
    metrics = card.get("metrics")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in dict(metrics).items()]
    training = card.get("training")
    if training:
        lines += ["", "## Training", ""]
        lines += _table(training) if isinstance(training, Mapping) else [str(training)]
    notes = card.get("limitations")
    if notes:
        lines += ["", "## Limitations", ""]
        lines += [f"- {note}" for note in ([notes] if isinstance(notes, str) else notes)]

    lines += ["", "## License", "", f"`{license_id}`."]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```"]
    if card.get("citation"):
        lines += ["", "```bibtex", str(card["citation"]).strip(), "```"]
    return "\n".join(lines) + "\n"


