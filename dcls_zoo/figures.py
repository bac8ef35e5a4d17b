"""Figures: the one figure setup (matplotlib's Agg canvas, no pyplot) and the pictures of positions.

- :func:`new_figure` / :func:`panel_grid`: a figure drawn without pyplot (no global backend
  switch, nothing kept alive by pyplot), with margins fixed in inches rather than solved by a
  layout engine (constrained layout cost seconds per picture, several times the drawing itself);
  :func:`render` draws it once into an RGB array, :func:`save_png` writes it.
- The pictures of learned positions: :func:`plot_position_scatter` (the model card's
  ``positions.png``), and the training diagnostics :class:`lightning_modules.position_monitor.PositionMonitor`
  draws: :func:`plot_position_histograms`, :func:`plot_spreads`, :func:`plot_speeds`,
  :func:`plot_kernels`, with the values they show (:func:`position_spread`,
  :func:`mean_abs_kernel`, :func:`histogram_edges`). The plotting functions take plain arrays, so
  they draw from saved values too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .construct import position_bounds
from .positions import PositionOwner, position_owners

__all__ = [
    "histogram_edges",
    "mean_abs_kernel",
    "new_figure",
    "panel_grid",
    "epoch_axis",
    "plot_kernels",
    "plot_position_histograms",
    "plot_position_scatter",
    "plot_speeds",
    "plot_spreads",
    "position_spread",
    "render",
    "save_png",
]


def new_figure(width: float, height: float):
    """An empty matplotlib ``Figure`` of ``width`` x ``height`` inches on an Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def panel_grid(rows: int, cols: int, panel_size: tuple[float, float]):
    """A figure of ``rows`` x ``cols`` panels of ``panel_size`` inches, fixed margins: ``(figure, axes)``
    with ``axes`` a 2D array."""
    width, height = panel_size[0] * cols, panel_size[1] * rows + 0.4
    figure = new_figure(width, height)
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.45 / height,
                           wspace=0.55 / panel_size[0], hspace=0.8 / panel_size[1])
    return figure, figure.subplots(rows, cols, squeeze=False)


def render(figure: Any) -> np.ndarray:
    """Draw ``figure`` once: an ``(H, W, 3)`` uint8 image (for a PNG and TensorBoard alike)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_png(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Draw ``figure`` and write it as a PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(render(figure)).save(path, format="PNG")  # the format named: callers write to temporary names
    return path


def _axis_labels(group: PositionOwner) -> list[str]:
    """``P[i]``'s axis in words: ``y``/``x`` for 2D layers, the kernel axis index otherwise."""
    layer = group.layers[0]
    names = {2: ("y", "x")}.get(layer.spatial_dims)
    return [f"P[{i}] ({names[axis]})" if names else f"P[{i}] (axis {axis})" for i, axis in enumerate(layer.learned_axes)]


def axis_labels(groups: Sequence[PositionOwner]) -> dict[str, list[str]]:
    """Per group name, each learned axis in words (the histograms' titles)."""
    return {group.name: _axis_labels(group) for group in groups}


# (completed epochs, per-axis counts (d, bins), per-axis bin edges)
Histogram = tuple[int, list[np.ndarray], list[np.ndarray]]


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
    figure, axes = panel_grid(len(histograms), cols, (4.0, 2.2))
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


def _mark_epoch(ax: Any, epoch: int | None, label: str, last: int | None = None) -> None:
    """A dashed vertical line at ``epoch`` (completed epochs), labelled in the legend; none past
    ``last``, the latest epoch drawn (a 1-epoch run never reaches a start at epoch 2)."""
    if epoch is not None and (last is None or epoch <= last):
        ax.axvline(epoch, color="0.4", linestyle="--", linewidth=1.0, label=label)


def epoch_axis(ax: Any, epochs: Sequence[int], label: str = "completed epochs") -> None:
    """Whole-epoch ticks on the x axis, with half an epoch of margin: a run of one or two epochs
    gets ticks at its epochs, not matplotlib's 0.945 ... 1.050 around a single point."""
    from matplotlib.ticker import MaxNLocator

    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if epochs and max(epochs) - min(epochs) <= 12:
        ax.set_xticks(range(min(epochs), max(epochs) + 1))  # MaxNLocator falls back to 0.1 steps below 2 ticks
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def _epochs_of(series: Mapping[str, Sequence[tuple]]) -> list[int]:
    return sorted({int(point[0]) for points in series.values() for point in points})


_REPULSIVE_LABEL = "repulsive loss starts"


def plot_speeds(speeds: Mapping[str, Sequence[tuple[int, float]]], repulsive_start: int | None = None):
    """One line per group: mean |change of the positions| per epoch, against completed epochs.

    ``repulsive_start``: completed epochs after which the repulsive loss is on (a dashed line).
    """
    figure, axes = panel_grid(1, 1, (6.0, 4.0))
    ax = axes[0][0]
    for name, points in speeds.items():
        ax.plot([epochs for epochs, _ in points], [speed for _, speed in points], marker="o", label=name)
    epochs = _epochs_of(speeds)
    _mark_epoch(ax, repulsive_start, _REPULSIVE_LABEL, max(epochs, default=None))
    epoch_axis(ax, epochs)
    ax.set_ylim(bottom=0)
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
    figure, axes = panel_grid(1, 2, (5.0, 4.0))
    figure.subplots_adjust(wspace=0.32)  # room for the right panel's y label between the panels
    epochs = _epochs_of(spreads)
    for ax, column, ylabel, title in (
        (axes[0][0], 1, "std of positions (px)", "position spread"),
        (axes[0][1], 2, "std / std of a uniform cover", "share of the window used"),
    ):
        for name, points in spreads.items():
            ax.plot([p[0] for p in points], [p[column] for p in points], marker="o", label=name)
        _mark_epoch(ax, repulsive_start, _REPULSIVE_LABEL, max(epochs, default=None))
        epoch_axis(ax, epochs)
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
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    names = list(kernels)
    count = max(len(history) for history in kernels.values())
    rows = sorted(set(np.linspace(0, count - 1, min(count, max_rows)).round().astype(int)))
    # a narrow colour-bar column after each group's column: bars never cover a neighbour's panels
    width, height = 3.9 * len(names), 2.6 * len(rows) + 0.85
    figure = new_figure(width, height)
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
def mean_abs_kernel(group: PositionOwner) -> np.ndarray:
    """The mean |dense kernel| of a group's layers over blocks and channels, as a 2D array.

    1D kernels become one row; 3D kernels are averaged over their first axis too.
    """
    total = sum(layer.kernel().abs().float().mean(dim=(0, 1)) for layer in group.layers) / len(group.layers)
    total = total.cpu().numpy()
    return total[None, :] if total.ndim == 1 else total.reshape(-1, *total.shape[-2:]).mean(axis=0)


def plot_position_scatter(model: nn.Module, max_panels: int = 16, max_bins_per_pixel: int = 4):
    """Where the learned 2D positions sit in their windows, or ``None`` without any.

    One panel per position group (a stage's shared positions, or a layer's own): the density of
    its elements (every element of every channel) in window coordinates, on the group's own colour
    scale, so a group of 10,000 elements in a 3x3 window reads as well as one of 500 in a 17x17
    window; row 0 at the top, as an image of the kernel. The cells are as fine as the elements
    allow (about 4 elements per cell when spread evenly; 1 to ``max_bins_per_pixel`` cells per
    pixel). Groups with other than two learned axes are left out; at most ``max_panels`` panels.
    """
    groups = [group for group in position_owners(model) if group.P.shape[0] == 2 and len(group.window) == 2]
    if not groups:
        return None
    shown = groups[:max_panels]
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    figure = new_figure(3.4 * columns, 3.7 * rows)
    # fixed margins (a layout engine would double the drawing time); room for two-line titles
    figure.subplots_adjust(left=0.07, right=0.94, bottom=0.3 / (3.7 * rows), top=1 - 0.75 / (3.7 * rows),
                           wspace=0.55, hspace=0.75 / 3.7 * 2)
    for index, group in enumerate(shown):
        window = group.window
        axes = figure.add_subplot(rows, columns, index + 1)
        values = group.P.detach().to("cpu", torch.float64)
        y = (values[0] + window[0] // 2).flatten().numpy()
        x = (values[1] + window[1] // 2).flatten().numpy()
        per_pixel = len(x) / (window[0] * window[1])
        bins_per_pixel = int(min(max_bins_per_pixel, max(1, (per_pixel / 4) ** 0.5)))
        edges = [np.linspace(-0.5, size - 0.5, size * bins_per_pixel + 1) for size in window]
        density, _, _ = np.histogram2d(y, x, bins=edges)
        image = axes.imshow(density, cmap="magma", interpolation="nearest", origin="upper",
                            extent=(-0.5, window[1] - 0.5, window[0] - 0.5, -0.5), vmin=0)
        axes.set_xticks(range(0, window[1], max(1, window[1] // 4)))
        axes.set_yticks(range(0, window[0], max(1, window[0] // 4)))
        axes.set_xlabel("x: window column (P[1] + centre)", fontsize=7)
        axes.set_ylabel("y: window row (P[0] + centre)", fontsize=7)
        count = group.P.shape[-1]
        size = "x".join(str(s) for s in window)
        axes.set_title(f"{group.path}\n{size} window, {count} elements x {values[0].numel() // count} kernels",
                       fontsize=8)
        bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03)
        cell = "px" if bins_per_pixel == 1 else f"1/{bins_per_pixel} px"
        bar.set_label(f"elements per {cell} cell", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if len(groups) > len(shown):
        figure.suptitle(f"first {len(shown)} of {len(groups)} position groups", fontsize=9)
    return figure
