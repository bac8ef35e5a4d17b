"""Helpers shared by the training tests: callbacks that tests add to CLI runs (importable as
``run_helpers.<name>`` from configs) and a minimal LightningModule for callback tests."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class CrossEntropyClassifier(pl.LightningModule):
    """Trains ``self.model`` (set by the subclass) with cross-entropy, logging ``train_loss``."""

    model: torch.nn.Module

    def training_step(self, batch, batch_index):
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(self.model(images), labels)
        self.log("train_loss", loss)
        return loss


class StopAfterEpoch(Callback):
    """Ends fitting after epoch ``epoch`` as an interruption would (the epoch's checkpoint is written)."""

    changes_results = False  # an interruption, not a setting: the run resumes without it

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True



class RecordLabels(Callback):
    """Appends each training batch's labels, one JSON line per step, to ``labels.jsonl`` in the
    working directory: the order of the samples a run trained on, comparable across runs."""

    changes_results = False  # watches only

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        with open("labels.jsonl", "a") as file:
            file.write(json.dumps({"step": trainer.global_step, "labels": batch[1].tolist()}) + "\n")


class StopAfterStep(Callback):
    """Ends fitting after optimizer step ``step``, mid-epoch, as an interruption would."""

    changes_results = False  # an interruption, not a setting: the run resumes without it

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True
