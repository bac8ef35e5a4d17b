"""Helpers shared by the training tests: callbacks that tests add to CLI runs (importable as
``run_helpers.<name>`` from configs) and a minimal LightningModule for callback tests."""

from __future__ import annotations

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

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True

