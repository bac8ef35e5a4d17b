"""The export format: what an export directory holds, written and read by the same rules.

An export (``dcls_zoo.save_pretrained``, ``dcls-zoo export``, a pushed Hub repo) is what
``timm.create_model("local-dir:DIR" | "hf-hub:org/name", pretrained=True)`` reads, and no pickle:

- ``config.json``: timm's model config (``architecture``, ``num_classes``, ``model_args``,
  ``label_names``, ``pretrained_cfg`` with the evaluation transform), written by timm's public
  ``save_for_hf``, plus our :data:`MANIFEST_KEY` entry: the sha256 and size of each weight file
  and the metrics;
- ``model.safetensors``: the state dict, with one metadata entry (:data:`METADATA_KEY`, a single
  sorted JSON text, so the same weights give the same bytes) holding the provenance (versions,
  architecture, DCLS settings, where the weights came from: one schema, :func:`provenance`) and
  **the config record**: ``config.json`` as written, without the manifest. The weights file's
  sha256 covers its metadata, so the record is as trustworthy as the weights;
- ``README.md`` (the model card) and ``positions.png``.

Reading (:func:`verify_export`): the recorded sha256 of every weight file must match, and
``config.json`` must equal the config record its weights file carries, field for field: an edited
``num_classes``, ``model_args``, ``label_names`` or ``pretrained_cfg`` (all of which decide what
the loaded model outputs) is refused, naming the field and both values. ``timm.create_model``
called directly reads ``config.json`` without any of these checks.

Weight-source arguments (:data:`WEIGHT_SOURCE_ARGUMENTS`: ``pretrained``, ``pretrained_cfg``...)
never travel inside saved model arguments: a model rebuilt to receive saved weights takes them
from the file and downloads nothing (:func:`refuse_weight_sources`, :func:`without_weight_sources`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import ExportMismatchError, WeightsFileError
from .names import check_model_name
from .state_dicts import confined_path, read_safetensors, sha256_file, verify_sha256
from .version import __version__

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "MANIFEST_KEY",
    "METADATA_KEY",
    "PICKLE_SUFFIXES",
    "POSITIONS_NAME",
    "WEIGHTS_NAME",
    "WEIGHT_SOURCE_ARGUMENTS",
    "check_config_matches_weights",
    "check_label_names",
    "export_state_dict",
    "manifest",
    "provenance",
    "read_export_config",
    "read_weights_metadata",
    "recorded_files",
    "refuse_weight_sources",
    "timm_config",
    "verify_export",
    "weights_metadata",
    "without_weight_sources",
]

_logger = logging.getLogger(__name__)

#: The weights file of an export directory and of our Hub repos (safetensors only).
WEIGHTS_NAME = "model.safetensors"
#: timm's model config of an export directory and of our Hub repos.
CONFIG_NAME = "config.json"
#: The model card.
CARD_NAME = "README.md"
#: The picture of the learned positions.
POSITIONS_NAME = "positions.png"
#: Files an export must never carry: anything ``torch.load`` would unpickle.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar")
#: The ``config.json`` entry in which an export records its files' sha256 (and its metrics).
MANIFEST_KEY = "dcls_zoo"
#: The one metadata entry of an export's safetensors file (provenance and config record).
METADATA_KEY = "dcls_zoo"
#: ``create_model`` arguments that fetch or read weights from somewhere.
WEIGHT_SOURCE_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
#: Model arguments that place a model rather than describe it: never part of an export's config.
_PLACEMENT_ARGUMENTS = ("device", "dtype")
#: The most classes a config may ask for (a classifier of 1M classes is already a 1 GB matrix).
_MAX_CLASSES = 1_000_000


# --------------------------------------------------------------------------------------------
# weight sources in model arguments


def refuse_weight_sources(model_args: Mapping[str, Any], what: str, advice: str) -> None:
    """Raise ``ValueError`` if ``model_args`` name a weight source (:data:`WEIGHT_SOURCE_ARGUMENTS`).

    Args:
        model_args: constructor arguments about to build a model.
        what: how the message names them (``"model_kwargs"``, ``"DIR's config.json model_args"``).
        advice: the sentence that says where weights go instead.
    """
    sources = sorted(set(model_args) & set(WEIGHT_SOURCE_ARGUMENTS))
    if sources:
        raise ValueError(f"{what}: {', '.join(sources)} would load weights inside the model's constructor; {advice}")


def without_weight_sources(model_args: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``model_args`` without :data:`WEIGHT_SOURCE_ARGUMENTS`, dropped with a warning naming them.

    For rebuilding a model that receives saved weights (a checkpoint's recorded arguments): the
    weights come from the file, so such arguments are dropped, never followed.
    """
    dropped = sorted(key for key in model_args if key in WEIGHT_SOURCE_ARGUMENTS)
    if dropped:
        _logger.warning(
            "%s: ignoring the model arguments %s: a model rebuilt from saved weights takes them from the file "
            "and downloads nothing", what, ", ".join(dropped),
        )
    return {key: value for key, value in model_args.items() if key not in WEIGHT_SOURCE_ARGUMENTS}


# --------------------------------------------------------------------------------------------
# writing


def _json(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists): how a config compares after a round trip."""
    return json.loads(json.dumps(value))


def provenance(architecture: str, model_args: Mapping[str, Any], *, dcls_settings: Mapping[str, Any] | None = None,
               source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where a weights file comes from: the one provenance schema of every file dcls-zoo writes.

    Args:
        architecture: the registered architecture.
        model_args: its constructor arguments (JSON values; others become ``None``).
        dcls_settings: the DCLS configuration (:func:`dcls_zoo.hub.card.dcls_settings`).
        source: how the weights were obtained, e.g. ``{"kind": "official", "file": ..., "entry": ...}``.
    """
    import timm
    import torch

    def plain(value: Any) -> Any:
        try:
            return _json(value)
        except (TypeError, ValueError):
            return None

    return {
        "created_by": "dcls-zoo",
        "versions": {"dcls_zoo": __version__, "torch": torch.__version__, "timm": timm.__version__},
        "architecture": architecture,
        "model_args": {key: plain(value) for key, value in model_args.items()},
        "dcls_settings": dict(dcls_settings or {}),
        "source": dict(source or {}),
    }


def weights_metadata(provenance_record: Mapping[str, Any], config_record: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The safetensors metadata of an export's weights: one entry, one sorted JSON text.

    safetensors writes its metadata map in an arbitrary order per process, so several entries
    would give the same weights different bytes; one entry gives byte-identical files.
    """
    record = {"provenance": provenance_record}
    if config_record is not None:
        record["config"] = _json(config_record)
    return {METADATA_KEY: json.dumps(record, sort_keys=True, separators=(",", ":"))}


def read_weights_metadata(path: str | os.PathLike[str], what: str) -> dict[str, Any] | None:
    """The :data:`METADATA_KEY` record of a safetensors file, or ``None`` when it has none.

    Raises:
        WeightsFileError: a truncated or garbled file, or a record that is not JSON.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{what}: {path} does not exist")
    try:
        with safe_open(os.fspath(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFileError(
            f"{what}: {path} ({path.stat().st_size:,} bytes) is truncated or not a safetensors file ({error}); "
            "download or export it again"
        ) from error
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise WeightsFileError(f"{what}: {path}'s {METADATA_KEY!r} metadata is not JSON ({error})") from error
    return record if isinstance(record, dict) else None


def timm_config(model: nn.Module, *, model_args: Mapping[str, Any] | None = None,
                data_config: Mapping[str, Any] | None = None,
                label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``config.json`` timm's public ``save_for_hf`` writes for ``model`` (without our manifest).

    ``save_for_hf`` writes the weights beside it; that copy goes to a temporary folder and is
    discarded (ours are written atomically with their metadata by the caller).
    """
    from timm.models import save_for_hf

    model_config = {"label_names": list(label_names)} if label_names is not None else None
    with tempfile.TemporaryDirectory(prefix="dcls-zoo-config-") as folder:
        save_for_hf(model, folder, model_config=model_config, model_args=dict(model_args or {}),
                    safe_serialization=True, data_config=dict(data_config) if data_config else None)
        return json.loads(Path(folder, CONFIG_NAME).read_text(encoding="utf-8"))


def manifest(directory: str | os.PathLike[str], names: tuple[str, ...] = (WEIGHTS_NAME,),
             metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :data:`MANIFEST_KEY` entry: ``{"version", "files": {name: {"sha256", "size"}}, "metrics"}``."""
    directory = Path(directory)
    entry: dict[str, Any] = {
        "version": __version__,
        "files": {name: {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size}
                  for name in names},
    }
    if metrics:
        entry["metrics"] = {str(key): _plain_or_none(value) for key, value in dict(metrics).items()}
    return entry


def _plain_or_none(value: Any) -> Any:
    try:
        return _json(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# reading


def read_export_config(path: str | os.PathLike[str], what: str | None = None) -> dict[str, Any]:
    """An export's ``config.json`` (``path`` is the file or its directory), as a dict, its values checked.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: not JSON, not a timm config, or values that would make the build do
            something else than build the model (naming the file and the field).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    what = what or os.fspath(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no {CONFIG_NAME} ({path} does not exist); an export directory holds one")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsFileError(f"{what}: {path} is not valid JSON ({error}); export the model again") from error
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise WeightsFileError(f"{what}: {path} is not a timm model config (no 'architecture' string)")
    _check_config_values(config, path, what)
    return config


def _check_config_values(config: Mapping[str, Any], path: Path, what: str) -> None:
    """Refuse a config whose values would make the model build do something else than build it."""
    try:
        check_model_name(config["architecture"], "architecture", f"{what}'s config.json")
    except ValueError as error:
        raise WeightsFileError(str(error)) from error
    model_args = config.get("model_args", {})
    if not isinstance(model_args, Mapping):
        raise WeightsFileError(f"{what}: {path}'s model_args is a {type(model_args).__name__}, not a mapping")
    try:
        refuse_weight_sources(model_args, f"{what}: {path}'s model_args", "an export holds its weights itself and is "
                              "never loaded with them. Remove them (or export the model again)")
    except ValueError as error:
        raise WeightsFileError(str(error)) from error
    placement = sorted(set(model_args) & set(_PLACEMENT_ARGUMENTS))
    if placement:
        raise WeightsFileError(
            f"{what}: {path}'s model_args.{placement[0]} is {model_args[placement[0]]!r}: an export's model arguments "
            "describe the architecture, not where it lives; remove it and move the loaded model with .to(...)"
        )
    num_classes = config.get("num_classes")
    for key, value in (("num_classes", num_classes), ("model_args.num_classes", model_args.get("num_classes"))):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_CLASSES):
            raise WeightsFileError(f"{what}: {path}'s {key} is {value!r}; expected an integer in [0, {_MAX_CLASSES:,}]")


def check_label_names(config: Mapping[str, Any], what: str) -> None:
    """Refuse ``label_names`` that are not one name per class.

    Raises:
        WeightsFileError: naming the count of each.
    """
    labels, num_classes = config.get("label_names"), config.get("num_classes")
    if isinstance(labels, (list, tuple)) and isinstance(num_classes, int) and len(labels) != num_classes:
        raise WeightsFileError(
            f"{what}: config.json's label_names has {len(labels)} names for num_classes={num_classes}; one name per "
            "class (export the model again)"
        )


def recorded_files(config: Mapping[str, Any], what: str) -> dict[str, str]:
    """``{file name: sha256}`` the config's manifest records (``{}`` for a config not written by dcls-zoo)."""
    if MANIFEST_KEY not in config:
        return {}  # not exported by dcls-zoo (e.g. timm's own save_for_hf)
    entry = config[MANIFEST_KEY]
    files = entry.get("files") if isinstance(entry, Mapping) else None
    if not isinstance(files, Mapping) or not files:
        raise WeightsFileError(
            f"{what}: config.json's {MANIFEST_KEY!r} entry records no weight files ({MANIFEST_KEY}.files); it was "
            "edited after export. Export the model again"
        )
    recorded = {}
    for name, record in files.items():
        sha = record.get("sha256") if isinstance(record, Mapping) else None
        if not isinstance(name, str) or not isinstance(sha, str):
            raise WeightsFileError(f"{what}: config.json's {MANIFEST_KEY}.files entry {name!r} has no sha256 string")
        recorded[name] = sha
    return recorded


def _first_difference(written: Any, found: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted path) where two JSON values differ, with both values."""
    if isinstance(written, dict) and isinstance(found, dict):
        for key in sorted(set(written) | set(found)):
            if key not in written or key not in found:
                return f"{path}{key}", found.get(key, "(absent)"), written.get(key, "(absent)")
            difference = _first_difference(written[key], found[key], f"{path}{key}.")
            if difference is not None:
                return difference
        return None
    if written != found:
        return path.rstrip("."), found, written
    return None


def check_config_matches_weights(config: Mapping[str, Any], weights: str | os.PathLike[str], what: str) -> bool:
    """Check that ``config.json`` is the config its weights file records (everything but the manifest).

    Returns:
        True when checked; False for weights that carry no config record (not written by
        dcls-zoo: nothing to check against, logged).

    Raises:
        ExportMismatchError: a field that differs, naming it and both values.
    """
    record = read_weights_metadata(weights, what)
    recorded = (record or {}).get("config")
    if recorded is None:
        if MANIFEST_KEY in config:
            raise ExportMismatchError(
                f"{what}: config.json has a {MANIFEST_KEY!r} manifest but {Path(weights).name} carries no config record "
                f"(written by dcls-zoo < {__version__}, or replaced); export the model again"
            )
        _logger.warning("%s: %s carries no config record (not written by dcls-zoo); config.json is not verified",
                        what, Path(weights).name)
        return False
    found = _json({key: value for key, value in config.items() if key != MANIFEST_KEY})
    difference = _first_difference(recorded, found)
    if difference is not None:
        field, in_config, in_weights = difference
        raise ExportMismatchError(
            f"{what}: config.json's {field} is {json.dumps(in_config)}, but {Path(weights).name} records "
            f"{json.dumps(in_weights)}; the config was edited after export and no longer describes these weights. "
            "Restore config.json (or export the model again)"
        )
    return True


def _check_safetensors_whole(path: Path, what: str) -> None:
    read_weights_metadata(path, what)  # opening the header checks it: truncated or garbled files fail


def verify_export(directory: str | os.PathLike[str], config: Mapping[str, Any], what: str) -> bool:
    """Check an export's weight files against the sha256 its ``config.json`` records, and the config
    against the record its weights file carries.

    Returns:
        True when checksums were recorded and match; False for an export without them (written by
        timm or by hand: logged; the file is still checked to be whole).

    Raises:
        ChecksumMismatchError: a file whose sha256 differs (tampered, truncated, replaced).
        ExportMismatchError: a ``config.json`` that is not the one exported with the weights.
        UnsafeFileNameError: a recorded name that is not a plain file name.
        WeightsFileError: a missing, truncated or garbled weights file.
    """
    directory = Path(directory)
    recorded = recorded_files(config, what)
    for name, sha in recorded.items():
        path = confined_path(directory, name, f"{what}'s config.json")
        if not path.is_file():
            raise WeightsFileError(f"{what}: {path} is missing (config.json records it)")
        verify_sha256(path, sha, f"{what}: {name}", advice="Export the model again (or restore the original file).")
    weights = directory / WEIGHTS_NAME
    if WEIGHTS_NAME not in recorded:
        _logger.warning("%s: no checksum recorded for %s (not exported by dcls-zoo); not verified", what, WEIGHTS_NAME)
        _check_safetensors_whole(weights, what)
    check_config_matches_weights(config, weights, what)
    check_label_names(config, what)  # after the record: an edited num_classes is named as such first
    return bool(recorded)


def export_state_dict(directory: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """The verified state dict of an export directory, its config, and a phrase describing it.

    Raises:
        as :func:`read_export_config` and :func:`verify_export`.
    """
    directory = Path(directory)
    what = f"export {directory}"
    config = read_export_config(directory, what)
    checked = verify_export(directory, config, what)
    state = read_safetensors(directory / WEIGHTS_NAME, what=f"{what}: {WEIGHTS_NAME}")
    return state, config, what + (" (sha256-verified)" if checked else " (no checksums recorded)")
