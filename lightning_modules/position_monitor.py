"""The positions of a network in training: finding each distinct position tensor, and diagnostics.

:func:`position_groups` lists every distinct ``P`` (and ``SIG``) of a network once, named by its
stage; the callbacks of :mod:`lightning_modules.method` and :class:`PositionMonitor` use it.

:class:`PositionMonitor` snapshots every distinct position tensor (one per stage when positions
are shared) at the start of training and after every N-th epoch, and draws:

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
picture set, recording a snapshot milliseconds). The spread and speed
curves mark the epoch where the repulsive position loss joins the loss (read from the
LightningModule's ``repulsive_loss_start``, when it has one).

With a TensorBoard logger the histograms and figures also go to TensorBoard. The plotting
functions take plain arrays, so they draw from saved values too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from PIL import Image
from torch import nn

from dcls_zoo.construct import position_bounds
from dcls_zoo.layers import DclsConvNd
from dcls_zoo.positions import position_owners, stage_of
from dcls_zoo.shared import SharedPositions

__all__ = [
    "PositionGroup",
    "position_groups",
    "network_of",
    "PositionMonitor",
    "plot_position_histograms",
    "plot_speeds",
    "plot_spreads",
    "plot_kernels",
    "position_spread",
    "mean_abs_kernel",
    "histogram_edges",
    "render",
]


def network_of(pl_module: pl.LightningModule, attribute: str, caller: str) -> nn.Module:
    """The network the LightningModule holds as ``attribute``, or an error naming the fix."""
    network = getattr(pl_module, attribute, None)
    if not isinstance(network, nn.Module):
        found = "has no attribute" if network is None else f"holds a {type(network).__name__} as"
        raise MisconfigurationException(
            f"{caller}: {type(pl_module).__name__} {found} {attribute!r}; pass model_attribute=<the name of the "
            f"attribute that holds the network>"
        )
    return network


@dataclass(frozen=True)
class PositionGroup:
    """One distinct position tensor ``P`` (and ``SIG``) of a network, with the layers that use it.

    Attributes:
        name: the stage (``"stages.0"``, ``"layer3"``) when the stage holds only this tensor,
            otherwise the owner's module path (layers outside stages: their path).
        path: module path of the owner.
        owner: the :class:`~dcls_zoo.shared.SharedPositions` or the DCLS layer that holds ``P``.
        layers: the DCLS layers whose kernels are built from these positions.
    """

    name: str
    path: str
    owner: SharedPositions | DclsConvNd
    layers: tuple[DclsConvNd, ...]

    @property
    def P(self) -> torch.Tensor:
        return self.owner.P

    @property
    def SIG(self) -> torch.Tensor | None:
        return self.owner.SIG

    @property
    def window(self) -> tuple[int, ...]:
        """The window sizes along the axes ``P`` moves in (``P[i]`` along ``window[i]``)."""
        return self.owner.learned_kernel_size


def position_groups(model: nn.Module) -> list[PositionGroup]:
    """Every distinct position tensor of ``model`` once, in module order.

    A :class:`~dcls_zoo.shared.SharedPositions` used by all blocks of a stage is one group (its
    tensor counts once), a layer that owns its positions is another.
    """
    owners = position_owners(model)
    stages = [stage_of(holder.path) or holder.path for holder in owners]
    return [
        PositionGroup(stage if stages.count(stage) == 1 else holder.path, holder.path, holder.owner, holder.layers)
        for holder, stage in zip(owners, stages)
    ]


# (completed epochs, per-axis counts (d, bins), per-axis bin edges)
Histogram = tuple[int, list[np.ndarray], list[np.ndarray]]


def _figure(rows: int, cols: int, panel_size: tuple[float, float]):
    """A figure drawn by Agg without pyplot (no global backend switch, nothing kept by pyplot).

    Margins are fixed in inches rather than solved by matplotlib's constrained layout: the
    solver cost seconds per picture, several times the drawing itself, at every epoch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = panel_size[0] * cols, panel_size[1] * rows + 0.4
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.45 / height,
                           wspace=0.55 / panel_size[0], hspace=0.8 / panel_size[1])
    return figure, figure.subplots(rows, cols, squeeze=False)


def render(figure: Any) -> np.ndarray:
    """Draw ``figure`` once: an ``(H, W, 3)`` uint8 image, saved as PNG and sent to TensorBoard alike."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _axis_labels(group: PositionGroup) -> list[str]:
    """``P[i]``'s axis in words: ``y``/``x`` for 2D layers, the kernel axis index otherwise."""
    layer = group.layers[0]
    names = {2: ("y", "x")}.get(layer.spatial_dims)
    return [f"P[{i}] ({names[axis]})" if names else f"P[{i}] (axis {axis})" for i, axis in enumerate(layer.learned_axes)]


def histogram_edges(window: int, bins_per_unit: int) -> np.ndarray:
    """Bin edges over the positions an axis of size ``window`` allows (``bins_per_unit`` per pixel)."""
    low, high = position_bounds(window)
    if high == low:  # a size-1 axis: one bin around its only position
        return np.array([low - 0.5, high + 0.5])
    return np.linspace(low, high, (high - low) * bins_per_unit + 1)


def plot_position_histograms(histograms: Mapping[str, Sequence[Histogram]], axis_labels: Mapping[str, Sequence[str]],
                             max_lines: int = 8):
    """One row per group, one column per axis; a step line per snapshot, dark (first) to light (latest).

    At most ``max_lines`` snapshots are drawn per panel, evenly spread, the first and latest always.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cols = max(len(labels) for labels in axis_labels.values())
    figure, axes = _figure(len(histograms), cols, (4.0, 2.2))
    figure.subplots_adjust(right=0.86)  # room for the epoch colour bar
    colours = colormaps["viridis"]
    last_epoch = max([max(snapshots[-1][0], 1) for snapshots in histograms.values()] or [1])
    epoch_scale = Normalize(0, last_epoch)  # one scale for every panel: a colour is an epoch everywhere
    for row, (name, snapshots) in enumerate(histograms.items()):
        chosen = sorted(set(np.linspace(0, len(snapshots) - 1, min(len(snapshots), max_lines)).round().astype(int)))
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(axis_labels[name]):
                ax.set_axis_off()
                continue
            for index in chosen:
                epochs, counts, edges = snapshots[index]
                ax.stairs(counts[col], edges[col], color=colours(epoch_scale(epochs)))
            ax.set_title(f"{name}: {axis_labels[name][col]}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("position (px from the window centre)", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("elements")
    from matplotlib.ticker import MaxNLocator

    bar = figure.colorbar(ScalarMappable(epoch_scale, colours), ax=axes.ravel().tolist(), fraction=0.04, pad=0.03)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    bar.set_label("completed epochs")
    return figure


def _mark_epoch(ax: Any, epoch: int | None, label: str) -> None:
    """A dashed vertical line at ``epoch`` (completed epochs), labelled in the legend."""
    if epoch is not None:
        ax.axvline(epoch, color="0.4", linestyle="--", linewidth=1.0, label=label)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("completed epochs")


_REPULSIVE_LABEL = "repulsive loss starts"


def plot_speeds(speeds: Mapping[str, Sequence[tuple[int, float]]], repulsive_start: int | None = None):
    """One line per group: mean |change of the positions| per epoch, against completed epochs.

    ``repulsive_start``: completed epochs after which the repulsive loss is on (a dashed line).
    """
    figure, axes = _figure(1, 1, (6.0, 4.0))
    ax = axes[0][0]
    for name, points in speeds.items():
        ax.plot([epochs for epochs, _ in points], [speed for _, speed in points], marker="o", label=name)
    _mark_epoch(ax, repulsive_start, _REPULSIVE_LABEL)
    _epoch_axis(ax)
    ax.set_ylabel("mean |ΔP| per epoch (px)")
    ax.set_title("position speed")
    ax.legend(fontsize=8)
    return figure


def position_spread(positions: torch.Tensor, window: Sequence[int]) -> tuple[float, float]:
    """How far a group's positions have spread: ``(std_px, ratio)``.

    ``positions``: ``(d, ...)``, one row of elements per learned axis, in pixels from the window
    centre; ``window``: the ``d`` window sizes. ``std_px`` is the standard deviation of the
    positions along each axis, averaged over the axes; ``ratio`` divides each axis' deviation
    by that of positions spread uniformly over the axis' window, ``(w - 1) / sqrt(12)``, before
    averaging: 0 = every element at one point, 1 = spread like a uniform cover of the window.
    """
    flat = positions.detach().double().reshape(len(window), -1)
    deviations = flat.std(dim=1, unbiased=False)
    uniform = torch.tensor([max(w - 1, 1) / 12**0.5 for w in window], dtype=torch.float64)
    return float(deviations.mean()), float((deviations / uniform).mean())


def plot_spreads(spreads: Mapping[str, Sequence[tuple[int, float, float]]], repulsive_start: int | None = None):
    """Two panels, one line per group: the positions' std (px) and its ratio to a uniform cover.

    ``spreads``: per group, ``(completed epochs, std_px, ratio)`` per snapshot (see
    :func:`position_spread`); ``repulsive_start``: as for :func:`plot_speeds`.
    """
    figure, axes = _figure(1, 2, (5.0, 4.0))
    for ax, column, ylabel, title in (
        (axes[0][0], 1, "std of positions (px)", "position spread"),
        (axes[0][1], 2, "std / std of a uniform cover", "share of the window used"),
    ):
        for name, points in spreads.items():
            ax.plot([p[0] for p in points], [p[column] for p in points], marker="o", label=name)
        _mark_epoch(ax, repulsive_start, _REPULSIVE_LABEL)
        _epoch_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    axes[0][1].axhline(1.0, color="0.7", linewidth=0.8)
    axes[0][0].legend(fontsize=8)
    return figure


def plot_kernels(kernels: Mapping[str, Sequence[tuple[int, np.ndarray]]], max_rows: int = 4):
    """Heatmaps of the mean |dense kernel|: a column per group, a row per snapshot.

    ``kernels``: per group, ``(completed epochs, 2D array)`` per snapshot. Each column has one
    colour scale (0 to the group's largest value over all its snapshots) and one colour bar, so
    a column reads as the same kernel over time. At most ``max_rows`` snapshots, evenly spread,
    the first and latest always. Axes are in pixels from the window centre.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(kernels)
    count = max(len(history) for history in kernels.values())
    rows = sorted(set(np.linspace(0, count - 1, min(count, max_rows)).round().astype(int)))
    # a narrow colour-bar column after each group's column: bars never cover a neighbour's panels
    width, height = 3.9 * len(names), 2.6 * len(rows) + 0.85
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    outer = figure.add_gridspec(1, len(names), left=0.6 / width, right=1 - 0.95 / width, bottom=0.45 / height,
                                top=1 - 0.85 / height, wspace=0.45)
    columns = [outer[0, col].subgridspec(len(rows), 2, width_ratios=[1, 0.06], wspace=0.08, hspace=0.55)
               for col in range(len(names))]
    for col, name in enumerate(names):
        history = kernels[name]
        scale = Normalize(0.0, max(float(kernel.max()) for _, kernel in history) or 1.0)
        image = None
        for row, index in enumerate(rows):
            ax = figure.add_subplot(columns[col][row, 0])
            if index >= len(history):
                ax.set_axis_off()
                continue
            epochs, kernel = history[index]
            height_px, width_px = kernel.shape
            extent = (-(width_px // 2) - 0.5, width_px - width_px // 2 - 0.5,
                      height_px - height_px // 2 - 0.5, -(height_px // 2) - 0.5)
            image = ax.imshow(kernel, cmap="viridis", norm=scale, extent=extent, interpolation="nearest")
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.set_title(f"{name}, epoch {epochs}", fontsize=9)
            ax.set_xlabel("x (px)", fontsize=8)
            ax.set_ylabel("y (px)", fontsize=8)
        if image is not None:
            bar = figure.colorbar(image, cax=figure.add_subplot(columns[col][:, 1]))
            bar.set_label("mean |weight|", fontsize=8)
    figure.suptitle("mean |kernel| over channels and blocks (one colour scale per column)")
    return figure


@torch.no_grad()
def mean_abs_kernel(group: PositionGroup) -> np.ndarray:
    """The mean |dense kernel| of a group's layers over blocks and channels, as a 2D array.

    1D kernels become one row; 3D kernels are averaged over their first axis too.
    """
    total = sum(layer.kernel().abs().float().mean(dim=(0, 1)) for layer in group.layers) / len(group.layers)
    total = total.cpu().numpy()
    return total[None, :] if total.ndim == 1 else total.reshape(-1, *total.shape[-2:]).mean(axis=0)


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
    reads), so a resumed run's pictures still start at epoch 0. Groups are found by :func:`position_groups`:
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
        self.groups: list[PositionGroup] = []
        self.histograms: dict[str, list[Histogram]] = {}
        self.speeds: dict[str, list[tuple[int, float]]] = {}
        self.spreads: dict[str, list[tuple[int, float, float]]] = {}  # (epochs, std_px, ratio)
        self.kernel_history: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.repulsive_start: int | None = None
        self._previous: tuple[int, dict[str, torch.Tensor]] | None = None  # (epochs, positions)
        self._undrawn = False  # a snapshot has come since the pictures were last drawn
        self._directory = Path()  # where this fit's pictures go, resolved in setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network = network_of(pl_module, self.model_attribute, type(self).__name__)
        self.groups = position_groups(network)
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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.groups or not trainer.is_global_zero:
            return
        if self._previous is not None and self._previous[0] == trainer.current_epoch:
            return  # resumed: this epoch's snapshot is in the restored record already
        self._snapshot(trainer, pl_module, trainer.current_epoch, log=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.current_epoch + 1
        if self.groups and trainer.is_global_zero and epochs % self.every_n_epochs == 0:
            self._snapshot(trainer, pl_module, epochs)
            if epochs % self.draw_every_n_epochs == 0:
                self._draw(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._undrawn and trainer.is_global_zero:
            self._draw(trainer)

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
        labels = {group.name: _axis_labels(group) for group in self.groups}
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
