"""Engineering callbacks: reproducible resumes and publishing (the method's own rules are in :mod:`.method`).

- :class:`EpochSeed`: reseeds every epoch, so a run resumed from an epoch-end checkpoint replays
  the same data order, augmentations and mixup as an uninterrupted one.
- :class:`CSVMetricsResume`: a run resumed in its own folder keeps the ``metrics.csv`` rows logged
  up to its checkpoint (Lightning's CSVLogger would delete the file) and appends after them.
- :class:`HubPushCallback`: pushes the trained model to the Hugging Face Hub.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

from dcls_zoo.hub import push_to_hub

from .run_record import training_record

__all__ = ["CSVMetricsResume", "EpochSeed", "HubPushCallback"]

log = logging.getLogger(__name__)

#: where a resumed run's metrics.csv waits until its rows are written back
BACKUP_NAME = "metrics.before-resume.csv"


class EpochSeed(Callback):
    """Reseed Python, NumPy and torch at the start of every training epoch from ``(seed, epoch, rank)``.

    Lightning checkpoints hold the model, optimizer, scheduler, EMA and loop state but not the
    random generators, so a resumed run would shuffle, augment, mix and drop paths differently
    from an uninterrupted one. Reseeding at ``on_train_epoch_start`` (which precedes the creation
    of the epoch's data iterator) makes every epoch's randomness a function of its index: resuming
    from an epoch-end checkpoint (``last.ckpt``) continues exactly. A mid-epoch checkpoint continues
    its epoch with the samples not seen yet (see :class:`~lightning_modules.data.ResumableDataLoader`),
    their random augmentations drawn afresh.

    Args:
        seed: base seed; ``None`` takes the run's ``seed_everything`` value (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def epoch_seed(self, epoch: int, rank: int) -> int:
        """The seed of one epoch on one process (distinct across epochs and ranks)."""
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        return (base * 1_000_003 + epoch * 1_009 + rank) % 2**32

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = self.epoch_seed(trainer.current_epoch, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device
        # The global generator alone is not enough: when Lightning creates the epoch's data iterator
        # (before or after this hook, depending on whether the run was resumed) it draws from the
        # generator the loader uses. DataModules with a ``reseed`` method keep that one apart.
        reseed = getattr(trainer.datamodule, "reseed", None)
        if callable(reseed):
            reseed(seed)


class CSVMetricsResume(Callback):
    """Continue a resumed run's ``metrics.csv`` instead of starting it again.

    Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` deletes ``metrics.csv`` when it opens
    a folder that holds one, so resuming a run in its own folder (``dcls-zoo fit --ckpt_path
    <run>/checkpoints/last.ckpt`` does) would lose every row before the checkpoint. Each checkpoint
    records how many rows each CSV logger had written, its epoch, and whether that epoch's batches
    were all done. On resume the rows up to the checkpoint are kept, with the epoch-end rows of a
    finished epoch logged just after it (training-epoch metrics come after the checkpoint that
    validation triggers); rows the interrupted run logged later are dropped, since the resumed
    run logs those steps again. The logger appends after the kept rows.

    ``dcls-zoo fit`` adds it and calls :meth:`read_existing_rows`. From Python: list it in the
    Trainer's callbacks and call ``read_existing_rows(trainer)`` before ``trainer.fit(ckpt_path=...)``
    (Lightning opens, and empties, the CSV files when fitting starts, before any callback hook).
    """

    changes_results = False  # keeps logs: not a setting of the run (lightning_modules.runs)

    CHECKPOINT_KEY = "dcls_zoo_csv_rows"

    def __init__(self) -> None:
        self._existing: dict[str, tuple[list[str], list[dict[str, str]]]] = {}  # log_dir -> (header, rows)

    @staticmethod
    def _csv_loggers(trainer: pl.Trainer) -> list[CSVLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]

    def read_existing_rows(self, trainer: pl.Trainer) -> None:
        """Read the ``metrics.csv`` files the trainer's CSV loggers are about to reopen.

        Each file is copied to ``metrics.before-resume.csv`` until its rows are written back (so a
        resume that dies before restoring the checkpoint loses nothing), and its logger is opened
        now, with Lightning's "previous log files ... will be deleted" warning silenced: the rows
        up to the checkpoint come back when it is restored.
        """
        for logger in self._csv_loggers(trainer):
            path = Path(logger.log_dir) / "metrics.csv"
            if not path.is_file():
                continue
            shutil.copy2(path, path.with_name(BACKUP_NAME))
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                self._existing[logger.log_dir] = (list(reader.fieldnames or []), list(reader))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted.*")
                logger.experiment  # noqa: B018 (opening the writer deletes the file: its rows are held above)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not trainer.is_global_zero:  # only rank zero writes logs (and the checkpoint)
            return
        rows = []
        for logger in self._csv_loggers(trainer):
            logger.save()  # flush what is buffered, so the file holds every row up to this step
            path = Path(logger.experiment.metrics_file_path)
            rows.append(_data_rows(path) if path.is_file() else 0)
        # Done: every batch of the epoch ran (the checkpoint validation triggers at its end), or
        # Lightning has counted the epoch as processed (a stop by max_steps or should_stop): a
        # resume starts the next epoch, so this one's epoch-end rows, logged after, are final.
        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        epochs = trainer.fit_loop.epoch_progress.current
        checkpoint[self.CHECKPOINT_KEY] = {
            "rows": rows,
            "epoch": trainer.current_epoch,
            "epoch_done": batches.completed >= trainer.num_training_batches or epochs.processed > epochs.completed,
        }

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(self.CHECKPOINT_KEY)
        if not saved:
            return
        for logger, count in zip(self._csv_loggers(trainer), saved["rows"]):
            header, rows = self._existing.pop(logger.log_dir, ([], []))
            if not rows:
                continue  # resumed into another folder: nothing to continue
            kept = rows[:count]
            if saved["epoch_done"]:
                kept += [row for row in rows[count:] if row.get("epoch") == str(saved["epoch"])]
            writer = logger.experiment
            writer.metrics_keys = header
            writer.metrics = [{key: value for key, value in row.items() if value != ""} for row in kept] + writer.metrics
            writer.save()
            Path(writer.metrics_file_path).with_name(BACKUP_NAME).unlink(missing_ok=True)
            log.info("CSVMetricsResume: %s continues after the %d rows logged up to the checkpoint", writer.metrics_file_path, len(kept))


def _data_rows(path: Path) -> int:
    with path.open(newline="") as file:
        return max(sum(1 for _ in csv.reader(file)) - 1, 0)


class HubPushCallback(Callback):
    """Push the trained model to the Hugging Face Hub when fitting ends (and every N epochs).

    The final push runs in ``on_fit_end``: after every ``on_train_end`` hook, so the last
    checkpoint is written and an averaging callback (EMA) has already copied its weights into
    the model. Only global rank zero pushes. A failure (no token, network, Hub error) is logged
    with what to do and never stops training; the local export is kept for a retry with
    ``dcls-zoo push <export> --repo-id <repo_id>``.

    Args:
        repo_id: ``org/name`` of the Hub repository (created if missing).
        every_n_epochs: also push after every N-th training epoch (``None``: only at the end).
        model_attribute: attribute of the LightningModule that holds the network.
        export_dir: where the exports go (default ``<trainer.default_root_dir>/hub_export``).
        revision, private, token, model_card: passed to :func:`dcls_zoo.push_to_hub`.
    """

    changes_results = False  # publishes: not a setting of the run (lightning_modules.runs)

    def __init__(
        self,
        repo_id: str,
        every_n_epochs: int | None = None,
        model_attribute: str = "model",
        export_dir: str | Path | None = None,
        revision: str | None = None,
        private: bool = False,
        token: str | None = None,
        model_card: Mapping[str, Any] | None = None,
    ) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or None, got {every_n_epochs}")
        self.repo_id = repo_id
        self.every_n_epochs = every_n_epochs
        self.model_attribute = model_attribute
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.revision, self.private, self.token = revision, private, token
        self.model_card = dict(model_card or {})
        self.pushed: list[Path] = []  # exports uploaded by this run, in order

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._push(trainer, pl_module, f"epoch={trainer.current_epoch}", trainer.current_epoch + 1)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._push(trainer, pl_module, "final", trainer.current_epoch)  # the counter moved past the last epoch

    def _push(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, epochs_done: int) -> None:
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, self.model_attribute)
        local_dir = (self.export_dir or Path(trainer.default_root_dir) / "hub_export") / name
        card = dict(self.model_card)
        # the card reports the run: its latest logged metrics and where training stopped
        metrics = {key: round(float(value), 6) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        if metrics and "metrics" not in card:
            card["metrics"] = metrics
        if "training" not in card:
            card["training"] = training_record(trainer, pl_module, trainer.datamodule, epochs=epochs_done,
                                               steps=trainer.global_step,
                                               weights=f"the weights at push '{name}' (dcls-zoo HubPushCallback)")
        try:
            result = push_to_hub(
                model, self.repo_id, revision=self.revision, private=self.private, token=self.token,
                commit_message=f"dcls-zoo: {name} ({epochs_done} epochs, step {trainer.global_step})",
                model_card=card, local_dir=local_dir,
            )
        except Exception as error:  # a failed push must never cost the run
            log.warning(
                "HubPushCallback: pushing %s to %s failed (%s: %s). Training goes on; the export is at %s "
                "if it was written: retry with `dcls-zoo push %s --repo-id %s`.",
                name, self.repo_id, type(error).__name__, error, local_dir, local_dir, self.repo_id,
            )
            return
        self.pushed.append(Path(result.local_dir))
        log.info("HubPushCallback: pushed %s to %s (%s)", name, self.repo_id, result.local_dir)
