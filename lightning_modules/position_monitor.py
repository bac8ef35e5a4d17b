"""Watching the DCLS positions learn: :class:`PositionMonitor` snapshots every distinct position
tensor (one per stage when positions are shared, :func:`dcls_zoo.positions.position_owners`) at
the start of training and after every N-th epoch, and draws (with :mod:`dcls_zoo.figures`):

- ``positions_hist.png``: per group and axis, the histogram of the positions, one line per
  snapshot (coloured by epoch, with a colour bar);
- ``positions_spread.png``: per group, how far the positions have spread: their standard
  deviation in pixels, and the same divided by the standard deviation of positions spread
  uniformly over the window (1 = as spread as a uniform cover of the window); logged as
  ``positions/spread/<group>`` (the ratio);
- ``positions_speed.png``: per group, the mean distance the positions moved per epoch; the same
  values are logged as ``positions/speed/<group>`` (CSV, TensorBoard, ... through ``pl_module.log``);
- ``kernels.png``: per group (columns) and snapshot (rows), the mean absolute dense kernel over
  channels and blocks, on one colour scale per group across the epochs, so rows compare.

Every picture is redrawn with the whole record so far after every ``draw_every_n_epochs``-th
epoch, at the end of training and when a fit stops on an exception (drawing costs seconds per
picture set, recording a snapshot milliseconds). The spread and speed curves mark the epoch where
the repulsive position loss joins the loss (read from the LightningModule's
``repulsive_loss_start``, when it has one). With a TensorBoard logger the histograms and figures
also go to TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from typing_extensions import override

from dcls_zoo.figures import (
    Histogram,
    axis_labels,
    histogram_edges,
    mean_abs_kernel,
    plot_kernels,
    plot_position_histograms,
    plot_speeds,
    plot_spreads,
    position_spread,
    render,
)
from dcls_zoo.positions import PositionOwner, position_owners

from .method import network_of

__all__ = ["PositionMonitor"]


class PositionMonitor(Callback):
    """Snapshot the DCLS positions during training and draw the appendix-style diagnostics.

    Snapshots are taken on global rank zero at ``on_train_start`` and at the end of every
    ``every_n_epochs``-th training epoch; they are labelled by the number of completed epochs
    (0: the weights fit starts from; a resumed run starts at its epoch and draws its first
    speeds one snapshot later). The pictures are drawn from the record after every
    ``draw_every_n_epochs``-th epoch and once more at the end of training (or when the fit stops
    on an exception) if a snapshot has come since. At each epoch snapshot:

    - the speed of each group, mean ``|P_now - P_previous|`` over its elements divided by the
      epochs between the two snapshots, is logged as ``positions/speed/<group>`` with
      ``pl_module.log(..., rank_zero_only=True)`` (so not usable as a ``monitor`` key) and drawn;
    - the spread of each group (:func:`position_spread`) is logged as ``positions/spread/<group>``
      (after the first epoch) and drawn;
    - the histograms and kernel heatmaps are recorded (see the module docstring for the files).

    Only the previous positions, the histogram counts, the spreads and the window-sized mean
    kernels are kept, so memory stays small on long runs. They are saved in checkpoints (:meth:`state_dict`, as tensors a weights-only load
    reads), so a resumed run's pictures still start at epoch 0. Groups are found by :func:`dcls_zoo.positions.position_owners`:
    positions shared by a stage count once and are named after the stage.

    Which weights: the ones being optimised. ``EMAWeightAveraging`` swaps its average into the
    model only for validation and swaps back at ``on_validation_epoch_end``, which comes before
    ``on_train_epoch_end``; the monitor therefore never sees the EMA weights.

    Args:
        dirpath: folder of the pictures (default ``<trainer.log_dir or default_root_dir>/positions``).
        every_n_epochs: snapshot after every N-th epoch.
        draw_every_n_epochs: redraw the pictures after every N-th epoch (an epoch with a
            snapshot; a multiple of ``every_n_epochs`` draws with every N-th snapshot); they are
            also drawn at the end of training.
        model_attribute: attribute of the LightningModule that holds the network.
        bins_per_unit: histogram bins per pixel of the window.
        max_hist_lines: most snapshots drawn per histogram panel.
        max_kernel_rows: most snapshots (rows) of ``kernels.png``; each row is a panel per group,
            and drawing them is most of the monitor's time at every snapshot.
        kernels: draw ``kernels.png`` (one ``kernel()`` call per DCLS layer per snapshot).
    """

    changes_results = False  # watches the positions: not a setting of the run (lightning_modules.runs)

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_epochs: int = 1,
        draw_every_n_epochs: int = 1,
        model_attribute: str = "model",
        bins_per_unit: int = 2,
        max_hist_lines: int = 8,
        max_kernel_rows: int = 4,
        kernels: bool = True,
    ) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("draw_every_n_epochs", draw_every_n_epochs),
                            ("bins_per_unit", bins_per_unit),
                            ("max_hist_lines", max_hist_lines), ("max_kernel_rows", max_kernel_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_epochs, self.bins_per_unit, self.max_hist_lines = every_n_epochs, bins_per_unit, max_hist_lines
        self.max_kernel_rows, self.draw_every_n_epochs = max_kernel_rows, draw_every_n_epochs
        self.model_attribute = model_attribute
        self.kernels = kernels
        self.groups: list[PositionOwner] = []
        self.histograms: dict[str, list[Histogram]] = {}
        self.speeds: dict[str, list[tuple[int, float]]] = {}
        self.spreads: dict[str, list[tuple[int, float, float]]] = {}  # (epochs, std_px, ratio)
        self.kernel_history: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.repulsive_start: int | None = None
        self._previous: tuple[int, dict[str, torch.Tensor]] | None = None  # (epochs, positions)
        self._undrawn = False  # a snapshot has come since the pictures were last drawn
        self._directory = Path()  # where this fit's pictures go, resolved in setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network = network_of(pl_module, self.model_attribute, type(self).__name__)
        self.groups = position_owners(network)
        if not self.groups:
            rank_zero_warn(f"PositionMonitor: {type(pl_module).__name__}.{self.model_attribute} has no DCLS layer; "
                           f"there are no positions to monitor.")
        # trainer.log_dir broadcasts from rank zero: every rank must ask, so ask here and not in rank-zero code
        self._directory = (self.dirpath if self.dirpath is not None
                           else Path(trainer.log_dir or trainer.default_root_dir) / "positions")
        # the module's schedule, drawn as a marker (None: the module has no repulsive loss)
        self.repulsive_start = getattr(pl_module, "repulsive_loss_start", None)
        # each fit draws its own record
        self.histograms, self.speeds, self._previous = {}, {}, None
        self.spreads, self.kernel_history, self._undrawn = {}, {}, False

    @override
    def state_dict(self) -> dict[str, Any]:
        """The record so far: histogram counts and edges (tensors), speeds, the last positions."""
        histograms = {
            name: [(epochs, [torch.from_numpy(c) for c in counts], [torch.from_numpy(e) for e in edges])
                   for epochs, counts, edges in records]
            for name, records in self.histograms.items()
        }
        previous = None if self._previous is None else {"epochs": self._previous[0], "positions": self._previous[1]}
        kernels = {name: [(epochs, torch.from_numpy(kernel)) for epochs, kernel in records]
                   for name, records in self.kernel_history.items()}
        return {"histograms": histograms, "speeds": self.speeds, "previous": previous, "spreads": self.spreads,
                "kernels": kernels}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the record of the run being resumed (called after :meth:`setup`)."""
        self.histograms = {
            name: [(int(epochs), [c.numpy() for c in counts], [e.numpy() for e in edges])
                   for epochs, counts, edges in records]
            for name, records in state_dict.get("histograms", {}).items()
        }
        self.speeds = {name: [(int(e), float(s)) for e, s in values] for name, values in state_dict.get("speeds", {}).items()}
        self.spreads = {name: [(int(e), float(s), float(r)) for e, s, r in values]
                        for name, values in state_dict.get("spreads", {}).items()}
        self.kernel_history = {name: [(int(e), k.numpy()) for e, k in records]
                               for name, records in state_dict.get("kernels", {}).items()}
        previous = state_dict.get("previous")
        self._previous = None if previous is None else (int(previous["epochs"]), dict(previous["positions"]))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.groups or not trainer.is_global_zero:
            return
        if self._previous is not None and self._previous[0] == trainer.current_epoch:
            return  # resumed: this epoch's snapshot is in the restored record already
        self._snapshot(trainer, pl_module, trainer.current_epoch, log=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.current_epoch + 1
        if self.groups and trainer.is_global_zero and epochs % self.every_n_epochs == 0:
            self._snapshot(trainer, pl_module, epochs)
            if epochs % self.draw_every_n_epochs == 0:
                self._draw(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._undrawn and trainer.is_global_zero:
            self._draw(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # an interrupted or failed fit keeps the pictures of the epochs it completed; a drawing that
        # fails too (a full disk) must not replace the fit's own error, which Lightning raises next
        if self._undrawn and trainer.is_global_zero:
            try:
                self._draw(trainer)
            except Exception as drawing_error:  # noqa: BLE001 - reported, the fit's error follows
                rank_zero_warn(f"PositionMonitor: the pictures of the stopped fit were not drawn: {drawing_error!r}")

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int, log: bool = True) -> None:
        """Record the positions after ``epochs`` epochs (speeds, spreads, histograms, kernels).

        ``log``: also log the spreads (not at ``on_train_start``, outside any epoch)."""
        positions = {group.name: group.P.detach().float().cpu().clone() for group in self.groups}
        if self._previous is not None and epochs > self._previous[0]:
            self._log_speeds(pl_module, epochs, positions)
        self._previous = (epochs, positions)
        self._record_histograms(epochs, positions)
        self._record_spreads(pl_module if log else None, epochs, positions)
        if self.kernels:
            for group in self.groups:
                self.kernel_history.setdefault(group.name, []).append((epochs, mean_abs_kernel(group)))
        self._undrawn = True

    def _draw(self, trainer: pl.Trainer) -> None:
        """Draw every picture from the record so far (and the latest positions' TensorBoard histograms)."""
        self._undrawn = False
        self._directory.mkdir(parents=True, exist_ok=True)
        labels = axis_labels(self.groups)
        self._publish(trainer, plot_position_histograms(self.histograms, labels, self.max_hist_lines),
                      "positions_hist.png", "positions/histograms")
        self._publish(trainer, plot_spreads(self.spreads, self.repulsive_start), "positions_spread.png",
                      "positions/spread")
        if self.speeds:
            self._publish(trainer, plot_speeds(self.speeds, self.repulsive_start), "positions_speed.png", None)
        if self.kernels:
            self._publish(trainer, plot_kernels(self.kernel_history, self.max_kernel_rows), "kernels.png",
                          "positions/kernels")
        _, positions = self._previous
        for experiment in self._tensorboards(trainer):
            for name, tensor in positions.items():
                for axis, values in enumerate(tensor):
                    experiment.add_histogram(f"positions/{name}/P{axis}", values, global_step=trainer.global_step)

    def _log_speeds(self, pl_module: pl.LightningModule, epochs: int, positions: dict[str, torch.Tensor]) -> None:
        previous_epochs, previous = self._previous
        for name, now in positions.items():
            speed = float((now - previous[name]).abs().mean()) / (epochs - previous_epochs)
            self.speeds.setdefault(name, []).append((epochs, speed))
            pl_module.log(f"positions/speed/{name}", speed, on_step=False, on_epoch=True, rank_zero_only=True)

    def _record_spreads(self, pl_module: pl.LightningModule | None, epochs: int,
                        positions: dict[str, torch.Tensor]) -> None:
        for group in self.groups:
            std_px, ratio = position_spread(positions[group.name], group.window)
            self.spreads.setdefault(group.name, []).append((epochs, std_px, ratio))
            if pl_module is not None:
                pl_module.log(f"positions/spread/{group.name}", ratio, on_step=False, on_epoch=True, rank_zero_only=True)

    def _record_histograms(self, epochs: int, positions: dict[str, torch.Tensor]) -> None:
        for group in self.groups:
            values = positions[group.name].numpy()
            edges = [histogram_edges(window, self.bins_per_unit) for window in group.window]
            # positions outside the window (no ClampPositions) count in the edge bins, so every element is counted
            counts = [np.histogram(np.clip(values[axis], e[0], e[-1]), bins=e)[0] for axis, e in enumerate(edges)]
            self.histograms.setdefault(group.name, []).append((epochs, counts, edges))

    def _publish(self, trainer: pl.Trainer, figure: Any, filename: str, tensorboard_tag: str | None) -> None:
        image = render(figure)  # drawn once for the file and TensorBoard (add_figure would draw again)
        Image.fromarray(image).save(self._directory / filename)
        if tensorboard_tag is not None:
            for experiment in self._tensorboards(trainer):
                experiment.add_image(tensorboard_tag, image, global_step=trainer.global_step, dataformats="HWC")
        figure.clear()  # a pyplot-free figure is freed with its last reference; clearing drops the artists now

    @staticmethod
    def _tensorboards(trainer: pl.Trainer) -> list[Any]:
        return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
