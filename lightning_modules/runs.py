"""A run: its folder, the checkpoints it wrote, which one ``last``/``best`` means, and its summary.

A run lives in ``<save_dir>/<name>/version_N`` (the folder its CSV/TensorBoard loggers write into;
``<name>`` holds one config's runs): ``metrics.csv``, ``checkpoints/`` (``last.ckpt`` after every
epoch, ``best-epochNNN-top1=0.XXXX.ckpt``), ``positions/``, ``export/``, ``summary.json`` and, for
``test``/``validate``/``predict`` of one of its checkpoints, ``<command>/<checkpoint>/``.

- :func:`run_folder_of`, :func:`version_of`, :func:`runs_newest_first`, :func:`experiment_dir`:
  where a run and its siblings are;
- :func:`written_checkpoints`, :func:`selected_checkpoint`: what a fit wrote, and which checkpoint
  its after-fit job tests and exports;
- :func:`named_checkpoint`: a run's ``last`` or ``best`` checkpoint;
- :class:`RunSummary`: ``summary.json``, one typed record written by the after-fit job and read
  by ``dcls-zoo compare`` and the cards;
- :class:`RunIdentity`: what made the run (``run.json``, and the same record in every checkpoint):
  the settings that decide its numbers (the resolved config without what only observes or logs)
  and their fingerprint. A resume with other settings, ``--ckpt_path last|best`` from another
  config's run, and ``compare`` reusing a run made with other settings are refused by comparing
  these records (:func:`setting_differences`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from dcls_zoo.version import __version__

from .checkpoints import load_checkpoint

__all__ = [
    "CHECKPOINTS_DIR",
    "IDENTITY_KEY",
    "IDENTITY_NAME",
    "LAST_NAME",
    "RESUMABLE_CHANGES",
    "SUMMARY_NAME",
    "RecordRunIdentity",
    "RunIdentity",
    "RunSummary",
    "evaluation_folder",
    "experiment_dir",
    "file_loggers",
    "named_checkpoint",
    "run_folder_of",
    "run_settings",
    "runs_newest_first",
    "epochs_done",
    "selected_checkpoint",
    "same_config",
    "setting_differences",
    "version_of",
    "written_checkpoints",
]

CHECKPOINTS_DIR = "checkpoints"
LAST_NAME = "last.ckpt"
SUMMARY_NAME = "summary.json"
IDENTITY_NAME = "run.json"
#: The checkpoint entry that carries the :class:`RunIdentity` of the run that wrote it.
IDENTITY_KEY = "dcls_zoo_run"
#: Lightning's own ``--ckpt_path`` values (resolved by the Trainer, not files).
CKPT_PATH_NAMES = ("last", "best", "hpc")
#: Loggers that write into ``save_dir/name/version`` (their ``init_args`` set the run folder).
FILE_LOGGERS = ("CSVLogger", "TensorBoardLogger")


# --------------------------------------------------------------------------------------------
# folders


def run_folder_of(ckpt_path: str | Path | None) -> Path | None:
    """The run folder a checkpoint was written in (``<run>/checkpoints/<file>.ckpt`` -> ``<run>``,
    absolute), or None."""
    if not ckpt_path or str(ckpt_path) in CKPT_PATH_NAMES or str(ckpt_path).startswith("registry"):
        return None
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == CHECKPOINTS_DIR else None


def version_of(run: Path) -> int | None:
    """N of a ``version_N`` run folder (the loggers' numbering), else None."""
    match = re.fullmatch(r"version_(\d+)", run.name)
    return int(match.group(1)) if match else None


def runs_newest_first(experiment: Path) -> list[Path]:
    """``<experiment>/version_N`` folders, highest N first."""
    runs = [run for run in Path(experiment).glob("version_*") if version_of(run) is not None]
    return sorted(runs, key=version_of, reverse=True)


def file_loggers(trainer_config: Any) -> list[Any]:
    """The CSV/TensorBoard logger entries of a parsed trainer config (jsonargparse namespaces)."""
    loggers = trainer_config.get("logger")
    entries = loggers if isinstance(loggers, list) else [loggers]
    return [
        entry for entry in entries
        if hasattr(entry, "get") and str(entry.get("class_path", "")).rsplit(".", 1)[-1] in FILE_LOGGERS
    ]


def experiment_dir(loggers: list[Any]) -> Path:
    """``<save_dir>/<name>`` of the first file logger: the folder that holds one config's runs."""
    first = loggers[0].init_args
    return Path(first.get("save_dir") or ".") / (first.get("name") or "")


def evaluation_folder(run: Path, command: str, checkpoint: str | Path) -> tuple[Path, str, str]:
    """Where ``test``/``validate``/``predict`` of a run's checkpoint log: ``(save_dir, name, version)``
    giving ``<run>/<command>/<checkpoint stem>/``."""
    return run / command, "", Path(checkpoint).stem


# --------------------------------------------------------------------------------------------
# checkpoints


def named_checkpoint(run: Path, name: Literal["last", "best"], best_of: Any = None) -> Path | None:
    """A run's ``last.ckpt``, or (``name="best"``) the best checkpoint its ``last.ckpt`` records.

    Args:
        best_of: ``last.ckpt`` already loaded (saves reading it again).
    """
    last = run / CHECKPOINTS_DIR / LAST_NAME
    if not last.is_file():
        return None
    if name == "last":
        return last
    if best_of is None:
        best_of = load_checkpoint(last, mmap=True)
    for key, state in best_of.get("callbacks", {}).items():
        best = state.get("best_model_path") if key.startswith("ModelCheckpoint") and isinstance(state, dict) else None
        if best and state.get("monitor") is not None and Path(best).is_file():
            return Path(best)
    return None


def written_checkpoints(trainer: pl.Trainer) -> list[Path]:
    """Every checkpoint file this fit's checkpoint callbacks keep, newest first."""
    written: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        written.update(str(p) for p in getattr(callback, "best_k_models", {}))
        written.update(getattr(callback, attr, "") for attr in ("last_model_path", "best_model_path"))
    files = [Path(p) for p in written if p and Path(p).is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def selected_checkpoint(trainer: pl.Trainer) -> tuple[str, Literal["best", "last", "none"]]:
    """``(path, which)`` of the checkpoint the after-fit job tests and exports: the best one a
    monitoring ``ModelCheckpoint`` kept, else the newest one any checkpoint callback wrote (a run
    stopped by ``max_steps`` mid-epoch has no best one); ``("", "none")`` if none."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_path and Path(callback.best_model_path).is_file():
            return callback.best_model_path, "best"
    written = written_checkpoints(trainer)
    return (str(written[0]), "last") if written else ("", "none")


# --------------------------------------------------------------------------------------------
# summary.json


@dataclass
class RunSummary:
    """What a fit produced, as ``summary.json`` records it (one flat JSON object).

    Attributes:
        arch: the model's architecture.
        epochs, global_steps: where training stopped.
        fit_seconds: wall time of ``trainer.fit`` (on a resume: of that part).
        log_dir: the run folder.
        resumed_from: the ``--ckpt_path`` the fit resumed from.
        checkpoint, checkpoint_kind: the checkpoint tested and exported, and whether it is the
            ``"best"`` validation epoch or the ``"last"`` one (``"none"``: the run wrote none).
        best_validation: the monitored validation metric at the best epoch (``{"best_val/top1": x}``).
        test: the test metrics of that checkpoint (``{"test/top1": x, "test/top5": y, ...}``).
        tested_weights: which weights of the checkpoint were tested (EMA or raw).
        test_images: how many test images were scored.
        params, macs_per_image: the size of the trained network.
        export_dir: where it was exported (or why not).
        fingerprint: the fingerprint of the settings that made the run (:class:`RunIdentity`).
        positions_frozen: whether the DCLS positions were kept at their start (``None``: no DCLS).
        position_shift_px: per position group, the mean |P - P_initial| of the tested weights, in px.
        extra: any other entries (kept through a read and write).
    """

    arch: str
    epochs: int
    global_steps: int
    fit_seconds: float
    log_dir: str | None = None
    resumed_from: str | None = None
    checkpoint: str | None = None
    checkpoint_kind: Literal["best", "last", "none"] = "none"
    best_validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    tested_weights: str | None = None
    test_images: int | None = None
    params: int | None = None
    macs_per_image: int | None = None
    export_dir: str | None = None
    fingerprint: str | None = None
    positions_frozen: bool | None = None
    position_shift_px: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_top1(self) -> float | None:
        return self.test.get("test/top1")

    @property
    def best_val_top1(self) -> float | None:
        return self.best_validation.get("best_val/top1")

    def to_json(self) -> dict[str, Any]:
        """The flat ``summary.json`` object (metric names as keys; ``None`` fields left out)."""
        record = asdict(self)
        flat: dict[str, Any] = {}
        for key, value in record.items():
            if key in ("best_validation", "test", "extra"):
                flat.update(value)
            elif key in ("checkpoint", "checkpoint_kind"):
                continue
            elif value is not None:
                flat[key] = value
        if self.checkpoint:
            flat[f"{self.checkpoint_kind}_checkpoint"] = self.checkpoint
        return flat

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """The record of a ``summary.json`` object (unknown entries go to ``extra``)."""
        data = dict(data)
        kind, checkpoint = "none", None
        for candidate in ("best", "last"):
            if f"{candidate}_checkpoint" in data:
                kind, checkpoint = candidate, data.pop(f"{candidate}_checkpoint")
                break
        best = {k: data.pop(k) for k in list(data) if k.startswith("best_val")}
        test = {k: data.pop(k) for k in list(data) if k.startswith("test/")}
        known = {name for name in cls.__dataclass_fields__} - {"best_validation", "test", "extra", "checkpoint",
                                                                "checkpoint_kind"}
        fields = {k: data.pop(k) for k in list(data) if k in known}
        for required in ("arch", "epochs", "global_steps", "fit_seconds"):
            fields.setdefault(required, None)
        return cls(**fields, checkpoint=checkpoint, checkpoint_kind=kind, best_validation=best, test=test, extra=data)

    def write(self, run: str | Path) -> Path:
        path = Path(run) / SUMMARY_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, run: str | Path) -> RunSummary | None:
        """The run's summary, or None when it has none (the fit never finished) or it is not JSON."""
        path = Path(run) / SUMMARY_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        return cls.from_json(data) if isinstance(data, dict) else None

    def lines(self) -> Iterable[str]:
        """The summary as an aligned two-column block."""
        flat = self.to_json()
        width = max(len(key) for key in flat)
        yield from ["", "dcls-zoo fit summary", "-" * 20]
        yield from (f"{key:<{width}}  {value}" for key, value in flat.items())


# --------------------------------------------------------------------------------------------
# what made a run: its settings and their fingerprint

#: Top-level entries of a resolved ``dcls-zoo fit`` config that do not decide a run's numbers.
_NOT_SETTINGS = {"config", "ckpt_path", "print_config", "test_after_fit", "export_after_fit", "dry_run"}
#: Trainer entries that only log, show or place files (the run's numbers are the same without them).
_TRAINER_NOT_SETTINGS = {
    "logger", "callbacks", "plugins", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
    "default_root_dir", "profiler", "enable_autolog_hparams", "model_registry", "num_sanity_val_steps",
    "detect_anomaly", "barebones",
}
#: Lightning's callbacks that watch, log or show but change nothing a run computes. Ours (and any
#: other) say so with a class attribute ``changes_results = False``; a ``ModelCheckpoint`` without
#: ``monitor`` only writes files (a monitored one decides which checkpoint is "best", and is a setting).
_OBSERVING_CALLBACKS = {
    "LearningRateMonitor", "TQDMProgressBar", "RichProgressBar", "RichModelSummary", "ModelSummary",
    "DeviceStatsMonitor", "Timer",
}
#: What a resume may change: how long training goes on (said, not refused). The learning-rate
#: schedule keeps the run's own length: it is restored with the optimizer.
RESUMABLE_CHANGES = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs",
                     "trainer.min_steps")


def _plain(value: Any) -> Any:
    """``value`` as JSON values (namespaces and tuples normalised), so settings compare and hash alike."""
    return json.loads(json.dumps(value, default=str))


def _changes_results(class_path: str, init_args: Mapping[str, Any]) -> bool:
    name = class_path.rsplit(".", 1)[-1]
    if name in _OBSERVING_CALLBACKS or (name == "ModelCheckpoint" and init_args.get("monitor") is None):
        return False
    module, _, attribute = class_path.rpartition(".")
    try:  # the config's own classes, already imported by the parser that resolved them
        cls = getattr(importlib.import_module(module), attribute) if module else None
    except (ImportError, AttributeError):
        cls = None
    return getattr(cls, "changes_results", True) is not False


def _callbacks(entries: Any) -> dict[str, Any]:
    """The callbacks that decide the run, by class name (a repeated class numbered: ``ModelCheckpoint#2``)."""
    settings: dict[str, Any] = {}
    for entry in entries if isinstance(entries, list) else [entries] if entries else []:
        if not isinstance(entry, Mapping):
            continue
        class_path = str(entry.get("class_path", ""))
        name = class_path.rsplit(".", 1)[-1]
        if not name or not _changes_results(class_path, entry.get("init_args") or {}):
            continue
        key, count = name, 1
        while key in settings:
            count += 1
            key = f"{name}#{count}"
        settings[key] = entry.get("init_args") or {}
    return settings


def run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a ``dcls-zoo fit`` run's numbers, from its resolved config (a dict).

    Everything but what only logs, shows or places files: the model and its recipe, the data, the
    trainer's loop and precision, the callbacks that act on training (position clamping, EMA,
    reseeding, which checkpoint is "best"), the seed, and dcls-zoo's version.
    """
    settings = {key: value for key, value in config.items() if key not in _NOT_SETTINGS and key != "trainer"}
    trainer = dict(config.get("trainer") or {})
    settings["trainer"] = {key: value for key, value in trainer.items() if key not in _TRAINER_NOT_SETTINGS}
    settings["callbacks"] = _callbacks(trainer.get("callbacks"))
    settings["dcls_zoo"] = __version__
    return _plain(settings)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def setting_differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, recorded value, given value)`` for every setting that differs, in field order
    (``"model.optimizer.init_args.lr"``; ``"(absent)"`` for a field only one side has)."""
    left, right = _flat(recorded), _flat(given)
    return [(key, left.get(key, "(absent)"), right.get(key, "(absent)"))
            for key in sorted(set(left) | set(right)) if left.get(key, "(absent)") != right.get(key, "(absent)")]


def describe_differences(differences: list[tuple[str, Any, Any]], recorded: str, given: str, limit: int = 3) -> str:
    """``"model.optimizer.init_args.lr: 0.002 in <recorded>, 0.001 in <given>; ..."`` (the first ``limit``)."""
    shown = [f"{key}: {json.dumps(a)} in {recorded}, {json.dumps(b)} in {given}" for key, a, b in differences[:limit]]
    more = f" (and {len(differences) - limit} more)" if len(differences) > limit else ""
    return "; ".join(shown) + more


@dataclass(frozen=True)
class RunIdentity:
    """What made a run: its settings (:func:`run_settings`) and their fingerprint (sha256 of their JSON)."""

    settings: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def of_config(cls, config: Mapping[str, Any]) -> RunIdentity:
        return cls(run_settings(config))

    def with_seed(self, seed: int) -> RunIdentity:
        """The identity of the same run with another seed (``compare``'s seeds of one arm)."""
        return RunIdentity({**self.settings, "seed_everything": seed})

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "settings": self.settings}

    @classmethod
    def from_json(cls, data: Any) -> RunIdentity | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("settings"), Mapping):
            return None
        return cls(dict(data["settings"]))

    def write(self, run: str | Path) -> Path:
        path = Path(run) / IDENTITY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, run: str | Path) -> RunIdentity | None:
        """The identity a run folder records, or None (no ``run.json``, or not ours)."""
        path = Path(run) / IDENTITY_NAME
        try:
            return cls.from_json(json.loads(path.read_text())) if path.is_file() else None
        except json.JSONDecodeError:
            return None

    @classmethod
    def of_checkpoint(cls, checkpoint: Mapping[str, Any]) -> RunIdentity | None:
        """The identity a checkpoint carries (:data:`IDENTITY_KEY`), or None."""
        return cls.from_json(checkpoint.get(IDENTITY_KEY))


#: Data-loader knobs: they change how fast batches come, not which images a model sees or scores.
_LOADER_KNOBS = {"batch_size", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor"}


def _model_and_data(settings: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(settings.get("data") or {})
    if isinstance(data.get("init_args"), Mapping):
        data["init_args"] = {k: v for k, v in data["init_args"].items() if k not in _LOADER_KNOBS}
    return {"model": settings.get("model"), "data": data}


def same_config(recorded: RunIdentity, given: RunIdentity) -> bool:
    """Whether a run was made by the same model and data as ``given`` describes (what
    ``--ckpt_path last|best`` of a config looks for; loader knobs such as the batch size aside)."""
    return _model_and_data(recorded.settings) == _model_and_data(given.settings)


class RecordRunIdentity(Callback):
    """Records a run's :class:`RunIdentity`: ``run.json`` in its folder when fitting starts, and the
    same record in every checkpoint it writes (:data:`IDENTITY_KEY`), so a copied checkpoint still
    says what made it. ``dcls-zoo fit`` adds it."""

    def __init__(self, identity: RunIdentity) -> None:
        self.identity = identity

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if trainer.is_global_zero and log_dir:
            self.identity.write(log_dir)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[IDENTITY_KEY] = self.identity.to_json()


def epochs_done(checkpoint: Mapping[str, Any]) -> int | None:
    """The training epochs a Lightning checkpoint's fit loop has processed (a resume starts the next
    one; the epoch-end checkpoint is written before Lightning counts its epoch "completed"), or None."""
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        return max(int(progress["processed"]), int(progress["completed"]))
    except (KeyError, TypeError, ValueError):
        return None
