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
  by ``dcls-zoo compare`` and the cards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl

from .checkpoints import load_checkpoint

__all__ = [
    "CHECKPOINTS_DIR",
    "LAST_NAME",
    "SUMMARY_NAME",
    "RunSummary",
    "evaluation_folder",
    "experiment_dir",
    "file_loggers",
    "named_checkpoint",
    "run_folder_of",
    "runs_newest_first",
    "selected_checkpoint",
    "version_of",
    "written_checkpoints",
]

CHECKPOINTS_DIR = "checkpoints"
LAST_NAME = "last.ckpt"
SUMMARY_NAME = "summary.json"
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
        fingerprint: the fingerprint of the settings that made the run (:mod:`.fingerprints`).
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
