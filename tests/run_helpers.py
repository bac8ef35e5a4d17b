"""Callbacks that tests add to CLI runs (importable as ``run_helpers.<name>`` from configs)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class StopAfterEpoch(Callback):
    """Ends fitting after epoch ``epoch`` as an interruption would (the epoch's checkpoint is written)."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True

