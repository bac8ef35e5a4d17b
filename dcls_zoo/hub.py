"""Export a model to a Hugging Face Hub folder and push it: ``save_pretrained`` / ``push_to_hub``.

An export directory holds exactly what ``timm.create_model("hf-hub:...")`` and
``timm.create_model("local-dir:...", pretrained=True)`` read, and no pickle:

- ``config.json``: timm's format (written by timm's own ``save_config_for_hf``): ``architecture``
  (the registered name), ``num_classes``, ``model_args`` (the arguments the model was built with),
  ``label_names`` when known, ``pretrained_cfg`` with the data config (input size, mean, std, ...);
- ``model.safetensors``: ``model.state_dict()`` (each stage's shared positions once) with provenance
  in the safetensors metadata (dcls-zoo, torch and timm versions, architecture, DCLS settings);
- ``README.md``: a model card (YAML front matter for the Hub, DCLS settings, usage, citation);
- ``positions.png``: the learned positions, one panel per position group (2D positions only).

Pushing needs a token (``token=``, ``HF_TOKEN`` or a saved ``hf auth login``); it is checked before
anything is written or sent. A failed upload never deletes the export and says how to retry it
(``dcls-zoo push <dir> --repo-id ...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .positions import dcls_layers, position_owners
from .shared import SHARED_ATTRIBUTE, SharedPositions

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "POSITIONS_NAME",
    "CITATION",
    "HubUnreachableError",
    "PushError",
    "PushResult",
    "dcls_settings",
    "hub_download_errors",
    "push_to_hub",
    "save_positions_figure",
    "save_pretrained",
    "upload_export",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
POSITIONS_NAME = "positions.png"
# Files an export must never carry: anything torch.load would unpickle.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")

CITATION = """@inproceedings{khalfaouihassani2023dilated,
  title     = {Dilated convolution with learnable spacings},
  author    = {Khalfaoui-Hassani, Ismail and Pellegrini, Thomas and Masquelier, Timoth{\\'e}e},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}"""

# Keys a ``model_card`` dict may hold (anything else is a typo and raises).
_CARD_KEYS = {
    "model_name": "title of the card (default: the repo name or the architecture)",
    "description": "free text under the title",
    "dataset": "training dataset: a Hub dataset id or a list of them (front matter `datasets`)",
    "metrics": "mapping metric -> value, e.g. {'top-1 (ImageNet-1k val)': 82.5}",
    "training": "the training recipe: text, or a mapping setting -> value",
    "license": "SPDX-like license id for the front matter (default: the architecture's, else mit)",
    "tags": "extra Hub tags",
    "citation": "extra BibTeX, cited after the DCLS paper",
}


class PushError(RuntimeError):
    """An upload failed; the export is intact at :attr:`local_dir` (the message says how to retry)."""

    def __init__(self, message: str, local_dir: Path) -> None:
        super().__init__(message)
        self.local_dir = local_dir


class HubUnreachableError(ConnectionError):
    """A download found neither the Hub nor a cached copy (the message lists the ways out)."""


@dataclass(frozen=True)
class PushResult:
    """Where a push went. ``os.fspath(result)`` (or ``Path(result)``) is the kept local export."""

    local_dir: Path
    repo_id: str
    revision: str
    commit_oid: str | None
    commit_url: str | None

    def __fspath__(self) -> str:
        return str(self.local_dir)


# --------------------------------------------------------------------------------------------
# DCLS settings and the positions picture
# --------------------------------------------------------------------------------------------


def _position_groups(model: nn.Module) -> list[tuple[str, torch.Tensor, tuple[int, ...]]]:
    """``(name, P, learned window)`` for every position tensor of ``model``, each once."""
    return [(h.path, h.owner.P, tuple(h.owner.learned_kernel_size)) for h in position_owners(model)]


def _size(window: Sequence[int]) -> str:
    return "x".join(str(s) for s in window)


def dcls_settings(model: nn.Module) -> dict[str, Any]:
    """The model's DCLS configuration, for the card and the weights' metadata (``{}`` without DCLS).

    Keys: ``layers`` (count), ``window`` (e.g. ``"17x17"``; several joined by ``", "``),
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
        "window": ", ".join(sorted({_size(m.dilated_kernel_size) for _, m in layers})),
        "kernel_count": ", ".join(str(c) for c in sorted({m.kernel_count for _, m in layers})),
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


def save_positions_figure(model: nn.Module, path: str | os.PathLike[str], max_panels: int = 16) -> Path | None:
    """Scatter the learned 2D positions of each position group in its window and save a PNG.

    One panel per group (a stage's shared positions, or a layer's own), every element of every
    channel a dot at ``(x, y) = (P[1], P[0])`` in window coordinates (row 0 at the top, as an
    image of the kernel). Groups with other than two learned axes are left out; at most
    ``max_panels`` panels. Drawn with matplotlib's Agg canvas (no pyplot, no display).

    Returns:
        The path, or None when the model has no 2D positions (nothing written).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [(n, p, w) for n, p, w in _position_groups(model) if p.shape[0] == 2 and len(w) == 2]
    if not groups:
        return None
    shown = groups[:max_panels]
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.6 * rows))
    FigureCanvasAgg(figure)
    # fixed margins (a layout engine would double the drawing time); room for two-line titles
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.3 / (3.6 * rows), top=1 - 0.75 / (3.6 * rows),
                           wspace=0.3, hspace=0.75 / 3.6 * 2)
    for index, (name, positions, window) in enumerate(shown):
        axes = figure.add_subplot(rows, columns, index + 1)
        values = positions.detach().to("cpu", torch.float32)
        y = (values[0] + window[0] // 2).flatten().numpy()
        x = (values[1] + window[1] // 2).flatten().numpy()
        axes.scatter(x, y, s=2, alpha=min(1.0, max(0.05, 300 / max(len(x), 1))), linewidths=0)
        axes.set_xlim(-0.5, window[1] - 0.5)
        axes.set_ylim(window[0] - 0.5, -0.5)
        axes.set_aspect("equal")
        axes.set_xticks(range(0, window[1], max(1, window[1] // 4)))
        axes.set_yticks(range(0, window[0], max(1, window[0] // 4)))
        axes.grid(True, linewidth=0.3, alpha=0.5)
        count = positions.shape[-1]
        axes.set_title(f"{name}\n{_size(window)} window, {count} elements x {values[0].numel() // count} kernels",
                       fontsize=8)
    if len(groups) > len(shown):
        figure.suptitle(f"first {len(shown)} of {len(groups)} position groups", fontsize=9)
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------------
# save_pretrained
# --------------------------------------------------------------------------------------------


def _architecture(model: nn.Module) -> str:
    import timm

    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if not architecture:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']: build it with "
            "dcls_zoo.create_model(name, ...) (or timm.create_model) so config.json can name a registered "
            "architecture to rebuild"
        )
    if not timm.is_model(architecture):
        raise ValueError(f"architecture {architecture!r} is not registered in timm; it could not be rebuilt")
    return architecture


def _check_rebuild(model: nn.Module, architecture: str, model_args: Mapping[str, Any]) -> None:
    """Build ``architecture(**model_args)`` (on the meta device) and compare state-dict keys and shapes."""
    import timm

    try:
        with torch.device("meta"):
            fresh = timm.create_model(architecture, pretrained=False, **model_args)
    except Exception:  # an init that needs real storage: build it for real
        fresh = timm.create_model(architecture, pretrained=False, **model_args)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want == have:
        return
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [f"{k}: {have[k]} vs {want[k]}" for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    problems = []
    for label, items in (("only in the rebuilt model", missing), ("only in this model", unexpected),
                         ("shape (this model vs rebuilt)", shapes)):
        if items:
            problems.append(f"{label}: {', '.join(items[:8])}" + (f" (+{len(items) - 8} more)" if len(items) > 8 else ""))
    raise ValueError(
        f"config.json would rebuild {architecture}({', '.join(f'{k}={v!r}' for k, v in model_args.items())}), "
        f"whose weights do not match this model ({'; '.join(problems)}). Was the model changed after "
        "create_model (e.g. dclsify on a plain architecture)? Pass model_args=... with the missing arguments, "
        "or register the modified architecture."
    )


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    model_card: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    model_args: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    check: bool = True,
) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``README.md`` and ``positions.png`` to ``directory``.

    ``timm.create_model("local-dir:<directory>", pretrained=True)`` (after ``import dcls_zoo``) and
    ``dcls_zoo.create_model("local-dir:<directory>", pretrained=True)`` rebuild the same model
    from it; pushed to the Hub, ``hf-hub:<repo_id>`` does the same.

    Args:
        model: a model built by ``dcls_zoo.create_model`` / ``timm.create_model`` (its
            ``pretrained_cfg['architecture']`` and recorded ``_model_args`` go to ``config.json``).
        directory: created if needed; our four files are overwritten, other files are left alone.
        model_card: optional card content, keys: ``model_name``, ``description``, ``dataset``,
            ``metrics``, ``training``, ``license``, ``tags``, ``citation``.
        label_names: one name per class (default: ``model.pretrained_cfg['label_names']`` when it
            matches ``num_classes``).
        data_config: preprocessing for the export (``input_size``, ``mean``, ``std``,
            ``crop_pct``, ``interpolation``, ...), as timm's ``save_for_hf``.
        model_args: extra or replacement constructor arguments for ``config.json``.
        repo_id: the Hub repo the card's usage snippet names (default: a ``local-dir:`` snippet).
        check: rebuild the architecture from the written arguments (on the meta device) and
            check that its state-dict keys and shapes match the model's.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: no registered architecture, a model that its config cannot rebuild, label
            names of the wrong length, unknown ``model_card`` keys.
    """
    import timm
    from safetensors.torch import save_file
    from timm.models._hub import get_model_args, save_config_for_hf

    from . import __version__

    card = dict(model_card or {})
    unknown = sorted(set(card) - set(_CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model_card keys {unknown}; known: {', '.join(_CARD_KEYS)}")
    architecture = _architecture(model)
    num_classes = getattr(model, "num_classes", None)
    if label_names is None:
        known = (model.pretrained_cfg or {}).get("label_names")
        label_names = known if known is not None and len(known) == num_classes else None
    elif num_classes is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label_names for a model with num_classes={num_classes}")
    rebuild_args = get_model_args(model, dict(model_args or {}))
    if check:
        _check_rebuild(model, architecture, rebuild_args)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_config: dict[str, Any] = {}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    save_config_for_hf(
        model,
        directory / CONFIG_NAME,
        model_config=model_config,
        model_args=dict(model_args or {}),
        data_config=dict(data_config) if data_config else None,
    )

    settings = dcls_settings(model)
    metadata = {
        "format": "pt",
        "architecture": architecture,
        "model_args": json.dumps({k: _json_or_none(v) for k, v in rebuild_args.items()}, sort_keys=True),
        "dcls_zoo_version": __version__,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "dcls_settings": json.dumps(settings, sort_keys=True),
        "created_by": "dcls_zoo.save_pretrained",
    }
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    _atomic_save_file(save_file, tensors, directory / WEIGHTS_NAME, metadata)

    picture = save_positions_figure(model, directory / POSITIONS_NAME)
    config = json.loads((directory / CONFIG_NAME).read_text())
    card_text = _model_card(model, config, settings, card, picture is not None, repo_id, directory)
    (directory / CARD_NAME).write_text(card_text, encoding="utf-8")
    return directory


def _atomic_save_file(save_file, tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    handle, temporary = tempfile.mkstemp(suffix=".safetensors.part", dir=path.parent)
    os.close(handle)
    try:
        try:
            save_file(tensors, temporary, metadata=metadata)
        except RuntimeError as error:
            if "share memory" not in str(error):
                raise
            raise ValueError(
                f"the model's state dict has tensors that share memory, which safetensors cannot store ({error}); "
                "dcls-zoo models store shared positions once, so this comes from a custom tie"
            ) from error
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------


def _yaml_list(key: str, items: Sequence[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(str(item))}" for item in items]


def _table(rows: Mapping[str, Any]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows.items()]
    return lines


def _model_card(
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
        "mean / std": f"{pretrained_cfg.get('mean')} / {pretrained_cfg.get('std')}",
        "interpolation / crop": f"{pretrained_cfg.get('interpolation')} / {pretrained_cfg.get('crop_pct')}",
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
                  "Each dot is one kernel element at (column, row) = (`P[1]`, `P[0]`) in its window."]

    source = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{directory}"
    lines += ["", "## Usage", "", "```python", "import dcls_zoo  # registers the DCLS architectures in timm",
              "import timm", "", f"model = dcls_zoo.create_model({source!r}, pretrained=True).eval()",
              f"# or, after `import dcls_zoo`: timm.create_model({source!r}, pretrained=True)",
              "data_config = timm.data.resolve_data_config({}, model=model)",
              "transform = timm.data.create_transform(**data_config)", "```"]

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

    lines += ["", "## License", "", f"`{license_id}`."]
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```"]
    if card.get("citation"):
        lines += ["", "```bibtex", str(card["citation"]).strip(), "```"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------


def _require_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError(
            "pushing to the Hugging Face Hub needs a write token: pass token=..., set HF_TOKEN, "
            "or run `hf auth login` once"
        )
    return token


def _check_export(directory: Path) -> None:
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"{directory} is not an export directory: no {', '.join(missing)} (write it with save_pretrained)")
    pickles = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{directory} holds pickle files {pickles}; remove them, an export carries safetensors only")


def _retry_command(directory: Path, repo_id: str, revision: str | None, private: bool) -> str:
    command = f"dcls-zoo push {shlex.quote(str(directory))} --repo-id {shlex.quote(repo_id)}"
    if revision:
        command += f" --revision {shlex.quote(revision)}"
    if private:
        command += " --private"
    return command


def upload_export(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload an export directory (from :func:`save_pretrained`) to the Hub repo ``repo_id``.

    Creates the repo (``exist_ok``) and, for a ``revision`` other than ``main``, the branch, then
    uploads the folder in one ``upload_folder`` call. ``endpoint`` defaults to ``HF_ENDPOINT``.

    Raises:
        ValueError: no token (checked first), not an export directory, pickle files in it.
        PushError: the Hub could not be reached or refused; the directory is untouched and the
            message gives the command that retries the upload.
    """
    from huggingface_hub import HfApi

    from . import __version__

    token = _require_token(token)
    directory = Path(directory).resolve()
    _check_export(directory)
    api = HfApi(endpoint=endpoint, token=token, library_name="dcls-zoo", library_version=__version__)
    target = repo_id
    try:
        target = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            api.create_branch(target, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=target,
            folder_path=directory,
            revision=revision,
            commit_message=commit_message or "Upload a dcls-zoo export",
        )
    except Exception as error:
        raise PushError(
            f"pushing {directory} to {target} on {api.endpoint} failed ({type(error).__name__}: {error}).\n"
            f"The local export is intact at {directory}; retry the upload with:\n"
            f"    {_retry_command(directory, target, revision, private)}",
            directory,
        ) from error
    return PushResult(directory, target, revision or "main", getattr(info, "oid", None), getattr(info, "commit_url", None))


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    model_card: Mapping[str, Any] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Export ``model`` with :func:`save_pretrained` into ``local_dir`` and upload it to ``repo_id``.

    The token (``token=``, else ``HF_TOKEN`` or a saved login, via ``huggingface_hub.get_token()``)
    is checked before anything is written. The export is kept: ``local_dir``, or a new
    ``dcls-zoo-export-*`` folder in the temp directory; it is the result's ``local_dir``.

    Returns:
        :class:`PushResult` (``os.fspath(result)`` is the export directory).

    Raises:
        ValueError: no token, or as :func:`save_pretrained`.
        PushError: the upload failed; the export is intact and the message says how to retry.
    """
    from huggingface_hub.utils import validate_repo_id

    token = _require_token(token)
    validate_repo_id(repo_id)
    directory = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="dcls-zoo-export-"))
    save_pretrained(model, directory, model_card=model_card, label_names=label_names, data_config=data_config,
                    repo_id=repo_id)
    message = commit_message or f"Upload {_architecture(model)} (dcls-zoo)"
    return upload_export(directory, repo_id, revision=revision, private=private, token=token,
                         commit_message=message, endpoint=endpoint)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def _unreachable(error: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return True
    try:
        import httpx2

        return isinstance(error, httpx2.TransportError)
    except ImportError:  # huggingface_hub < 2 uses httpx / requests
        return isinstance(error, ConnectionError)


@contextlib.contextmanager
def hub_download_errors(what: str = "the model") -> Iterator[None]:
    """Turn "no Hub and no cached copy" during a download into a :class:`HubUnreachableError`.

    The message says how to go on: reuse the cache with ``HF_HUB_OFFLINE=1``, point
    ``HF_ENDPOINT`` at a mirror, or load an export with ``local-dir:``::

        with dcls_zoo.hub_download_errors("org/repo"):
            model = timm.create_model("hf-hub:org/repo", pretrained=True)
    """
    try:
        yield
    except Exception as error:
        if not _unreachable(error):
            raise
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            situation = (f"HF_HUB_OFFLINE is set and {what} is not in the cache {constants.HF_HUB_CACHE}: "
                         "unset HF_HUB_OFFLINE once to download it, or point HF_HUB_CACHE (or HF_HOME) at the "
                         "cache that holds it")
        else:
            situation = (f"could not reach the Hugging Face Hub at {constants.ENDPOINT} to download {what}, and "
                         f"the cache {constants.HF_HUB_CACHE} has no copy")
        raise HubUnreachableError(
            f"{situation} ({type(error).__name__}: {error}).\n"
            "  - to use a copy downloaded before (the same cache, or one copied here), set HF_HUB_OFFLINE=1 "
            "and HF_HUB_CACHE / HF_HOME to its folder;\n"
            "  - to use a mirror or a private hub, set HF_ENDPOINT=<its URL> before starting Python;\n"
            "  - or export the model once (dcls_zoo.save_pretrained(model, DIR)) and load it with "
            "create_model('local-dir:DIR', pretrained=True)."
        ) from error
