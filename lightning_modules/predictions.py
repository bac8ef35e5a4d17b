"""``PredictionsCSV``: what ``dcls-zoo predict`` writes, one row per image with named top-k classes.

A Lightning ``BasePredictionWriter``: at the end of prediction it writes ``predictions.csv`` into
the run's log directory (``predictions-rank<r>.csv`` per process under DDP) with the columns
``index``, ``label`` (the true class when the data has one), ``prediction`` and
``top<k>`` = ``"<class>:<probability>"``, class names from the DataModule's ``class_names``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["PredictionsCSV"]


class PredictionsCSV(BasePredictionWriter):
    """Write the predictions of ``ImageClassifier.predict_step`` as a CSV file.

    Args:
        top_k: how many classes per image, with their probabilities (at most the class count).
        path: the file (default ``<trainer.log_dir>/predictions.csv``).
    """

    changes_results = False  # writes predictions: not a setting of the run

    def __init__(self, top_k: int = 5, path: str | Path | None = None) -> None:
        super().__init__(write_interval="epoch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k, self.path = top_k, Path(path) if path is not None else None
        self.written: Path | None = None

    def _target(self, trainer: pl.Trainer) -> Path:
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.csv"
        return self.path or directory / name

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        outputs = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else batch_indices
        names = list(getattr(trainer.datamodule, "class_names", None) or [])
        path = self._target(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            k = None
            for output, batch_index in zip(outputs, indices or [None] * len(outputs)):
                probabilities = output["probabilities"].float().cpu()
                k = k or min(self.top_k, probabilities.shape[-1])
                if rows == 0:
                    writer.writerow(["index", "label", "prediction", *[f"top{i + 1}" for i in range(k)]])
                top = probabilities.topk(k, dim=-1)
                labels = output.get("labels")
                for row in range(probabilities.shape[0]):
                    index = batch_index[row] if batch_index is not None else rows
                    label = _name(names, int(labels[row])) if labels is not None else ""
                    classes = [f"{_name(names, int(c))}:{p:.4f}" for p, c in zip(top.values[row].tolist(), top.indices[row].tolist())]
                    writer.writerow([index, label, _name(names, int(top.indices[row, 0])), *classes])
                    rows += 1
        self.written = path
        if trainer.is_global_zero:
            print(f"dcls-zoo predict: wrote {rows} predictions to {path}", flush=True)


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
