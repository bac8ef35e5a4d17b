"""Lightning callbacks that hold dcls-zoo's engineering (the science lives in the modules)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

__all__ = ["HubPushCallback"]

log = logging.getLogger(__name__)


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

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._push(trainer, pl_module, f"epoch={trainer.current_epoch}", trainer.current_epoch + 1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._push(trainer, pl_module, "final", trainer.current_epoch)  # the counter moved past the last epoch

    def _push(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, epochs_done: int) -> None:
        if not trainer.is_global_zero:
            return
        from dcls_zoo import push_to_hub

        model = getattr(pl_module, self.model_attribute)
        local_dir = (self.export_dir or Path(trainer.default_root_dir) / "hub_export") / name
        card = dict(self.model_card)
        # the card reports the run: its latest logged metrics and where training stopped
        metrics = {key: round(float(value), 6) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        if metrics and "metrics" not in card:
            card["metrics"] = metrics
        card.setdefault("training", f"{epochs_done} epoch(s), {trainer.global_step} optimizer steps "
                                    f"(dcls-zoo HubPushCallback, push '{name}')")
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
