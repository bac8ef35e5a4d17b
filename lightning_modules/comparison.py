"""Comparing architectures under one training recipe: the plan, the results, the table and the plot.

A comparison is a YAML file (see ``configs/compare/``)::

    base: quick.yaml                      # optional: start from another comparison file's keys
    fit_config: ../quickstart.yaml        # the recipe every arm trains with (relative to this file)
    fit_args: [--trainer.max_epochs=6]    # the same extra options for every run
    seeds: [0, 1, 2]
    reference: k7                         # optional: every other arm is tested against this one
    arms:                                 # one model per arm: --model.arch and --model.model_kwargs
      - {name: dcls, label: "DCLS 17/15/7/3", arch: convnext_dcls_atto, model_kwargs: {...}}
      - {name: dcls50, label: "DCLS, positions at 50x", arch: convnext_dcls_atto, model_kwargs: {...},
         fit_args: [--model.position_lr_scale=50]}   # an arm's own options, after the comparison's
      - {name: k7, label: "dense 7x7", arch: convnext_k7_atto, model_kwargs: {...}}

:func:`load_comparison` reads and checks it; :class:`RunResult` is what one ``dcls-zoo fit`` left
in its run folder (``summary.json`` and ``metrics.csv``); :func:`summarise` turns the runs into
one :class:`ArmSummary` per arm (mean and standard deviation over the seeds);
:func:`differences` tests each arm against the reference (Welch, :mod:`lightning_modules.significance`);
:func:`markdown_table`, :func:`differences_table`, :func:`movement_table`, :func:`csv_rows` and
:func:`plot_comparison` present them. Running the fits is the job of
:mod:`lightning_modules.commands.compare`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dcls_zoo.figures import epoch_axis, new_figure

from .runs import RunSummary
from .significance import Difference, welch_difference

__all__ = [
    "Arm",
    "ArmSummary",
    "Comparison",
    "RunResult",
    "csv_rows",
    "differences",
    "differences_table",
    "load_comparison",
    "markdown_table",
    "movement_table",
    "plot_comparison",
    "read_run",
    "runs_table",
    "summarise",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Arm:
    """One architecture of a comparison.

    Attributes:
        name: short identifier, also the folder of its runs (letters, digits, ``_.-``).
        label: what tables and plots call it.
        arch: ``--model.arch`` (a registered model name).
        model_kwargs: ``--model.model_kwargs`` (replaces the fit config's).
        fit_args: the arm's own ``dcls-zoo fit`` options (``--model.position_lr_scale=50``,
            ``--model.freeze_positions=true``), given after the comparison's ``fit_args``.
    """

    name: str
    label: str
    arch: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    fit_args: tuple[str, ...] = ()

    @property
    def options(self) -> str:
        """The arm's own options as one string (``""`` without any)."""
        return " ".join(self.fit_args)


@dataclass(frozen=True)
class Comparison:
    """A parsed comparison file (see the module docstring)."""

    path: Path
    fit_config: Path
    fit_args: tuple[str, ...]
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    title: str = ""
    reference: str | None = None  # the name of the arm the others are tested against


def _fail(path: Path, key: str, message: str) -> None:
    raise ValueError(f"{path}: {key}: {message}")


def load_comparison(path: str | Path) -> Comparison:
    """Read and check a comparison file.

    Raises:
        FileNotFoundError: the file, or the ``fit_config`` it names, is missing.
        ValueError: a missing or malformed key (the message names the file and the key).
    """
    path = Path(path)
    data, fit_config_dir = _read_with_base(path, seen=())
    if not isinstance(data.get("fit_config"), str):
        _fail(path, "fit_config", "must name the fit config every arm trains with")
    fit_config = (fit_config_dir / data["fit_config"]).resolve()
    if not fit_config.is_file():
        raise FileNotFoundError(f"{path}: fit_config: {fit_config} does not exist")
    fit_args = data.get("fit_args") or []
    if not isinstance(fit_args, list) or not all(isinstance(a, str) for a in fit_args):
        _fail(path, "fit_args", "must be a list of option strings, e.g. [--trainer.max_epochs=6]")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        _fail(path, "seeds", f"must be a non-empty list of integers in [0, 2**32 - 1], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        _fail(path, "seeds", f"lists a seed twice: {seeds}")
    arms_data = data.get("arms")
    if not isinstance(arms_data, list) or not arms_data:
        _fail(path, "arms", "must be a non-empty list of {name, label, arch, model_kwargs}")
    arms = []
    for index, entry in enumerate(arms_data):
        key = f"arms[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("arch"), str):
            _fail(path, key, "needs at least a name and an arch")
        extra = set(entry) - set(_ARM_KEYS)
        if extra:
            _fail(path, key, f"unknown key(s) {sorted(extra)}; expected {', '.join(_ARM_KEYS)}")
        if not _NAME.fullmatch(entry["name"]):
            _fail(path, f"{key}.name", f"{entry['name']!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
        kwargs = entry.get("model_kwargs") or {}
        if not isinstance(kwargs, dict):
            _fail(path, f"{key}.model_kwargs", "must be a mapping")
        arm_args = _arm_fit_args(path, f"{key}.fit_args", entry.get("fit_args"))
        arms.append(Arm(entry["name"], str(entry.get("label") or entry["name"]), entry["arch"], dict(kwargs), arm_args))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        _fail(path, "arms", f"names must differ, got {names}")
    reference = data.get("reference")
    if reference is not None and reference not in names:
        _fail(path, "reference", f"must name one of the arms ({', '.join(names)}), got {reference!r}")
    return Comparison(path, fit_config, tuple(fit_args), tuple(seeds), tuple(arms), str(data.get("title") or ""),
                      reference)


_KEYS = ("base", "fit_config", "fit_args", "seeds", "reference", "arms", "title")
_ARM_KEYS = ("name", "label", "arch", "model_kwargs", "fit_args")
# what each run's own config sets: an arm's option would silently override it (or the comparison's bookkeeping)
_RESERVED_OPTIONS = {
    "--model.arch": "the arm's arch",
    "--model.model_kwargs": "the arm's model_kwargs",
    "--seed_everything": "the comparison's seeds",
    "--ckpt_path": "compare, which resumes interrupted runs itself",
    "--trainer.logger": "compare, which logs each run into its own folder",
}


def _arm_fit_args(path: Path, key: str, value: Any) -> tuple[str, ...]:
    """An arm's ``fit_args``: a list of option strings, none of them set by the run's own config."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        _fail(path, key, f"must be a list of option strings, e.g. [--model.position_lr_scale=50], got {value!r}")
    for argument in value:
        option = argument.split("=", 1)[0]
        if option in _RESERVED_OPTIONS:
            _fail(path, key, f"{argument!r} sets what {_RESERVED_OPTIONS[option]} sets; remove it")
    return tuple(value)


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], Path]:
    """The file's keys over its ``base``'s (recursively), and the folder its ``fit_config`` is relative to."""
    if not path.is_file():
        raise FileNotFoundError(f"comparison file {path} does not exist")
    if path.resolve() in seen:
        _fail(path, "base", f"the bases form a loop: {' -> '.join(map(str, seen))}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        _fail(path, "(top level)", "must be a mapping with fit_config, seeds and arms")
    unknown = set(data) - set(_KEYS)
    if unknown:
        _fail(path, ", ".join(sorted(unknown)), f"unknown key(s); expected {', '.join(_KEYS)}")
    base = data.pop("base", None)
    if base is None:
        return data, path.parent
    if not isinstance(base, str):
        _fail(path, "base", "must name another comparison file")
    merged, fit_config_dir = _read_with_base(path.parent / base, (*seen, path.resolve()))
    if "fit_config" in data:
        fit_config_dir = path.parent
    return {**merged, **data}, fit_config_dir


@dataclass(frozen=True)
class RunResult:
    """What one fit of a comparison left in its run folder.

    Attributes:
        arm, seed: which run.
        test_top1: top-1 on the test set of the checkpoint the run selected (its best validation epoch).
        best_val_top1: that epoch's validation top-1.
        fit_seconds: wall time of ``trainer.fit`` (without the test; on a resumed run, the last part).
        params: parameter count of the network (unique tensors).
        macs: multiply-adds per image (half the FLOPs PyTorch's counter finds in one forward
            of the trained network, kernel construction included).
        val_top1: ``(epoch, top-1)`` per validation epoch, from ``metrics.csv``.
        position_shift: ``(group, mean |P - P_initial| in px)`` per position group of the tested
            weights (empty without DCLS positions, or from a run recorded before it was measured).
        positions_frozen: whether the run kept its positions at their initial values.
    """

    arm: str
    seed: int
    test_top1: float
    best_val_top1: float
    fit_seconds: float
    params: int
    macs: int
    val_top1: tuple[tuple[int, float], ...] = ()
    position_shift: tuple[tuple[str, float], ...] = ()
    positions_frozen: bool = False


def _validation_curve(metrics_csv: Path) -> tuple[tuple[int, float], ...]:
    if not metrics_csv.is_file():
        return ()
    with open(metrics_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/top1")]
    return tuple((int(row["epoch"]), float(row["val/top1"])) for row in rows)


def read_run(run_dir: str | Path, arm: str, seed: int) -> RunResult | None:
    """The result of a finished run (its ``summary.json`` has a test top-1), else ``None``."""
    run_dir = Path(run_dir)
    summary = RunSummary.read(run_dir)
    if summary is None or None in (summary.test_top1, summary.best_val_top1, summary.params, summary.macs_per_image):
        return None
    shifts = tuple((str(name), float(value)) for name, value in (summary.position_shift_px or {}).items())
    return RunResult(
        arm, seed, float(summary.test_top1), float(summary.best_val_top1), float(summary.fit_seconds),
        int(summary.params), int(summary.macs_per_image), _validation_curve(run_dir / "metrics.csv"),
        shifts, bool(summary.positions_frozen),
    )


@dataclass(frozen=True)
class ArmSummary:
    """One arm over its seeds: means and (sample) standard deviations; std is 0 for one seed."""

    arm: Arm
    seeds: tuple[int, ...]
    test_top1: tuple[float, float]
    best_val_top1: tuple[float, float]
    fit_seconds: float  # mean
    params: int
    macs: int  # mean over the seeds (DCLS: depends on how far the trained positions reach)
    position_shift: dict[str, tuple[float, float]] = field(default_factory=dict)  # group -> mean, std (px)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(arms: Sequence[Arm], results: Sequence[RunResult]) -> list[ArmSummary]:
    """One :class:`ArmSummary` per arm with at least one finished run, in the arms' order."""
    summaries = []
    for arm in arms:
        runs = sorted((r for r in results if r.arm == arm.name), key=lambda r: r.seed)
        if not runs:
            continue
        summaries.append(ArmSummary(
            arm,
            tuple(r.seed for r in runs),
            _mean_std([r.test_top1 for r in runs]),
            _mean_std([r.best_val_top1 for r in runs]),
            sum(r.fit_seconds for r in runs) / len(runs),
            runs[0].params,
            round(sum(r.macs for r in runs) / len(runs)),
            _shift_summary(runs),
        ))
    return summaries


def _shift_summary(runs: Sequence[RunResult]) -> dict[str, tuple[float, float]]:
    """Mean and std of each group's shift over the runs that measured it, in group order."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for name, value in run.position_shift:
            values.setdefault(name, []).append(value)
    return {name: _mean_std(group) for name, group in values.items()}


def _test_top1(results: Sequence[RunResult], arm: str) -> list[float]:
    return [r.test_top1 for r in sorted(results, key=lambda r: r.seed) if r.arm == arm]


def differences(arms: Sequence[Arm], results: Sequence[RunResult], reference: str | None
                ) -> list[tuple[Arm, Difference]]:
    """Each arm with finished runs against the ``reference`` arm: Welch's difference of the mean
    test top-1 (as fractions), in the arms' order; ``[]`` when the reference has no finished run."""
    base = _test_top1(results, reference) if reference else []
    if not base:
        return []
    return [(arm, welch_difference(tops, base)) for arm in arms
            if arm.name != reference and (tops := _test_top1(results, arm.name))]


def _percent(value: tuple[float, float], seeds: int) -> str:
    # one seed has no spread to show: "± 0.00" would claim a measured zero
    return f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}" if seeds > 1 else f"{100 * value[0]:.2f} (1 seed)"


def _options_cell(arm: Arm) -> str:
    return f"`{arm.options}`" if arm.fit_args else "-"


def markdown_table(summaries: Sequence[ArmSummary]) -> str:
    """The comparison as a Markdown table, best test top-1 first (with each arm's own options)."""
    lines = [
        "| arm | model | test top-1 (%) | best val top-1 (%) | seeds | params | MACs / image | fit time / run | options |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in sorted(summaries, key=lambda s: -s.test_top1[0]):
        lines.append(
            f"| {s.arm.label} | `{s.arm.arch}` | {_percent(s.test_top1, len(s.seeds))} | "
            f"{_percent(s.best_val_top1, len(s.seeds))} | "
            f"{len(s.seeds)} | {s.params / 1e6:.3f} M | {s.macs / 1e6:.1f} M | {s.fit_seconds / 60:.1f} min | "
            f"{_options_cell(s.arm)} |"
        )
    return "\n".join(lines)


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def differences_table(found: Sequence[tuple[Arm, Difference]], reference: Arm) -> str:
    """Each arm against the reference as a Markdown table: the difference of the mean test top-1
    in percentage points, its Welch 95% interval and Welch's p-value (or why there is none)."""
    lines = [
        f"| arm | minus {reference.label} (points) | 95% CI (Welch) | p (Welch's t-test) | seeds (arm, reference) |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, d in found:
        interval = f"[{_points(d.low)}, {_points(d.high)}]" if d.tested else "-"
        p_value = f"{d.p_value:.3g}" if d.tested else d.why_untested()
        lines.append(f"| {arm.label} | {_points(d.difference)} | {interval} | {p_value} | {d.n}, {d.n_reference} |")
    return "\n".join(lines)


def movement_table(summaries: Sequence[ArmSummary]) -> str:
    """Mean |P - P_initial| (px, mean ± std over seeds) per arm and position group, for the arms with
    DCLS positions; ``""`` when none has any."""
    groups = list(dict.fromkeys(name for s in summaries for name in s.position_shift))
    moved = [s for s in summaries if s.position_shift]
    if not moved:
        return ""
    lines = ["| arm | options | " + " | ".join(groups) + " |", "|---|---|" + "---:|" * len(groups)]
    for s in moved:
        cells = [(f"{s.position_shift[g][0]:.2f} ± {s.position_shift[g][1]:.2f}" if len(s.seeds) > 1
                  else f"{s.position_shift[g][0]:.2f}") if g in s.position_shift else "-" for g in groups]
        lines.append(f"| {s.arm.label} | {_options_cell(s.arm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_rows(arms: Sequence[Arm], results: Sequence[RunResult], reference: str | None) -> list[list[Any]]:
    """``results.csv``: a header, then one row per run (by arm, then seed).

    Each row holds the run (its arm's options, test and validation top-1, fit time, size, the
    mean |P - P_initial| of each position group as ``shift_px:<group>``) and its arm's test
    against the reference (repeated on every run of the arm; empty for the reference itself):
    ``diff_vs_reference`` (mean test top-1 minus the reference's, as a fraction), ``ci95_low``,
    ``ci95_high`` and ``welch_p`` (empty with fewer than 3 seeds in either arm).
    """
    by_name = {arm.name: arm for arm in arms}
    groups = list(dict.fromkeys(name for r in results for name, _ in r.position_shift))
    tests = {arm.name: d for arm, d in differences(arms, results, reference)}
    header = ["arm", "arch", "arm_fit_args", "seed", "test_top1", "best_val_top1", "fit_seconds", "params",
              "macs_per_image", "positions_frozen", *(f"shift_px:{g}" for g in groups),
              "reference", "diff_vs_reference", "ci95_low", "ci95_high", "welch_p"]
    rows: list[list[Any]] = [header]
    for r in sorted(results, key=lambda r: (r.arm, r.seed)):
        shifts = dict(r.position_shift)
        d = tests.get(r.arm)
        test = ([reference, d.difference, d.low, d.high, d.p_value] if d is not None
                else [reference if r.arm == reference else "", "", "", "", ""])
        rows.append([r.arm, by_name[r.arm].arch, by_name[r.arm].options, r.seed, r.test_top1, r.best_val_top1,
                     r.fit_seconds, r.params, r.macs, r.positions_frozen if r.position_shift else "",
                     *(shifts.get(g, "") for g in groups), *("" if v is None else v for v in test)])
    return rows


def runs_table(arms: Sequence[Arm], results: Sequence[RunResult]) -> str:
    """Every run as a Markdown table row, by arm then seed."""
    labels = {arm.name: arm.label for arm in arms}
    lines = ["| arm | seed | test top-1 (%) | best val top-1 (%) | fit time | params | MACs / image |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {labels[r.arm]} | {r.seed} | {100 * r.test_top1:.2f} | {100 * r.best_val_top1:.2f} | "
              f"{r.fit_seconds / 60:.1f} min | {r.params:,} | {r.macs / 1e6:.1f} M |"
              for r in sorted(results, key=lambda r: (r.arm, r.seed))]
    return "\n".join(lines)


def plot_comparison(arms: Sequence[Arm], results: Sequence[RunResult], title: str = "", reference: str | None = None):
    """The comparison in panels: test top-1 per arm (a dot per seed, mean ± std); with a
    ``reference`` arm that has runs, each other arm's difference from it with its Welch 95%
    interval; validation top-1 per epoch; and, when runs measured them, how far each arm's
    positions moved (mean |P - P_initial| per group, a dot per seed).

    Returns a matplotlib ``Figure`` (drawn without pyplot); its axes are in that order.
    """

    found = differences(arms, results, reference)
    shifted = any(r.position_shift for r in results)
    panels = 2 + bool(found) + shifted
    columns = 2 if panels == 4 else panels
    rows = 2 if panels == 4 else 1
    # constrained layout fits the long arm labels; drawn once per rewrite of the results, its cost is no matter
    figure = new_figure(6.4 * columns, 4.6 * rows + 0.3)
    figure.set_layout_engine("constrained")
    axes = list(figure.subplots(rows, columns).flat)
    left = axes.pop(0)
    delta = axes.pop(0) if found else None
    right = axes.pop(0)
    moved = axes.pop(0) if shifted else None
    colours = {arm.name: f"C{index}" for index, arm in enumerate(arms)}
    for index, arm in enumerate(arms):
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        colour = colours[arm.name]
        tops = [100 * r.test_top1 for r in runs]
        mean, std = _mean_std(tops)
        left.scatter([index] * len(tops), tops, color=colour, alpha=0.6, zorder=3)
        left.errorbar([index + 0.15], [mean], yerr=[std], color=colour, marker="D", capsize=4, zorder=4)
        epochs = sorted({epoch for r in runs for epoch, _ in r.val_top1})
        curve = [_mean_std([100 * v for r in runs for e, v in r.val_top1 if e == epoch])[0] for epoch in epochs]
        right.plot([e + 1 for e in epochs], curve, marker="o", color=colour, label=arm.label)
    labels = [arm.label for arm in arms]
    left.set_xticks(range(len(arms)), labels, rotation=20, ha="right", fontsize=8)
    left.set_ylabel("test top-1 (%)")
    left.set_title("test top-1: one dot per seed, diamond = mean ± std", fontsize=10)
    left.grid(axis="y", alpha=0.3)
    if delta is not None:
        _plot_differences(delta, found, colours, next(arm.label for arm in arms if arm.name == reference))
    epoch_axis(right, sorted({e + 1 for r in results for e, _ in r.val_top1}))
    right.set_ylabel("validation top-1 (%), mean over seeds")
    right.set_title("validation top-1 (raw or EMA weights, as the recipe validates)", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    if moved is not None:
        _plot_shifts(moved, arms, results, colours)
    if title:
        figure.suptitle(title)
    return figure


def _plot_differences(ax: Any, found: Sequence[tuple[Arm, Difference]], colours: dict[str, str],
                      reference_label: str) -> None:
    """Each arm's mean test top-1 minus the reference's, with its Welch 95% interval (a bare
    point where there are too few seeds for one), p-values beside them."""
    for row, (arm, d) in enumerate(found):
        y = len(found) - 1 - row  # the arms' order from the top
        if d.tested:
            ax.errorbar([100 * d.difference], [y], xerr=[[100 * (d.difference - d.low)], [100 * (d.high - d.difference)]],
                        color=colours[arm.name], marker="D", capsize=5, lw=2)
            note = f"p = {d.p_value:.2g}"
        else:
            ax.plot([100 * d.difference], [y], marker="D", color=colours[arm.name], mfc="none")
            note = "too few seeds"
        ax.annotate(note, (100 * d.difference, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=8)
    ax.axvline(0.0, color="black", lw=1)
    ax.margins(x=0.15)  # room for the notes above the outermost points
    ax.set_yticks(range(len(found)), [arm.label for arm, _ in reversed(found)], fontsize=8)
    ax.set_ylim(-0.6, len(found) - 0.4)
    ax.set_xlabel(f"test top-1 minus {reference_label} (points)")
    ax.set_title("difference from the reference, Welch 95% CI", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def _plot_shifts(ax: Any, arms: Sequence[Arm], results: Sequence[RunResult], colours: dict[str, str]) -> None:
    """Mean |P - P_initial| per position group: a bar per arm (its mean over seeds), a dot per seed."""
    groups = list(dict.fromkeys(name for r in results for name, _ in r.position_shift))
    moving = [arm for arm in arms if any(r.arm == arm.name and r.position_shift for r in results)]
    width = 0.8 / max(len(moving), 1)
    for index, arm in enumerate(moving):
        runs = [dict(r.position_shift) for r in results if r.arm == arm.name and r.position_shift]
        xs = [g + (index - (len(moving) - 1) / 2) * width for g in range(len(groups))]
        means = [_mean_std([run[name] for run in runs if name in run] or [0.0])[0] for name in groups]
        ax.bar(xs, means, width * 0.9, color=colours[arm.name], alpha=0.5, label=arm.label)
        for x, name in zip(xs, groups):
            values = [run[name] for run in runs if name in run]
            ax.scatter([x] * len(values), values, color=colours[arm.name], s=10, zorder=3)
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel("mean |P - P_initial| (px)")
    ax.set_title("how far the positions moved (tested weights), per group", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
