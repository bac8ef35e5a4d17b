"""Comparing architectures under one training recipe: the plan, the results, the table and the plot.

A comparison is a YAML file (see ``configs/compare/``)::

    base: quick.yaml                      # optional: start from another comparison file's keys
    fit_config: ../quickstart.yaml        # the recipe every arm trains with (relative to this file)
    fit_args: [--trainer.max_epochs=6]    # the same extra options for every run
    seeds: [0, 1, 2]
    arms:                                 # one model per arm: --model.arch and --model.model_kwargs
      - {name: dcls, label: "DCLS 17/15/7/3", arch: convnext_dcls_atto, model_kwargs: {...}}
      - {name: k7, label: "dense 7x7", arch: convnext_k7_atto, model_kwargs: {...}}

:func:`load_comparison` reads and checks it; :class:`RunResult` is what one ``dcls-zoo fit`` left
in its run folder (``summary.json`` and ``metrics.csv``); :func:`summarise` turns the runs into
one :class:`ArmSummary` per arm (mean and standard deviation over the seeds);
:func:`markdown_table` and :func:`plot_comparison` present them. Running the fits is the job of
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

from dcls_zoo.figures import new_figure

from .runs import RunSummary

__all__ = [
    "Arm",
    "ArmSummary",
    "Comparison",
    "RunResult",
    "load_comparison",
    "markdown_table",
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
    """

    name: str
    label: str
    arch: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A parsed comparison file (see the module docstring)."""

    path: Path
    fit_config: Path
    fit_args: tuple[str, ...]
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    title: str = ""


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
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(path, "seeds", f"must be a non-empty list of integers, got {seeds!r}")
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
        extra = set(entry) - {"name", "label", "arch", "model_kwargs"}
        if extra:
            _fail(path, key, f"unknown key(s) {sorted(extra)}; expected name, label, arch, model_kwargs")
        if not _NAME.fullmatch(entry["name"]):
            _fail(path, f"{key}.name", f"{entry['name']!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
        kwargs = entry.get("model_kwargs") or {}
        if not isinstance(kwargs, dict):
            _fail(path, f"{key}.model_kwargs", "must be a mapping")
        arms.append(Arm(entry["name"], str(entry.get("label") or entry["name"]), entry["arch"], dict(kwargs)))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        _fail(path, "arms", f"names must differ, got {names}")
    return Comparison(path, fit_config, tuple(fit_args), tuple(seeds), tuple(arms), str(data.get("title") or ""))


_KEYS = ("base", "fit_config", "fit_args", "seeds", "arms", "title")


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
    """

    arm: str
    seed: int
    test_top1: float
    best_val_top1: float
    fit_seconds: float
    params: int
    macs: int
    val_top1: tuple[tuple[int, float], ...] = ()


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
    return RunResult(
        arm, seed, float(summary.test_top1), float(summary.best_val_top1), float(summary.fit_seconds),
        int(summary.params), int(summary.macs_per_image), _validation_curve(run_dir / "metrics.csv"),
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
        ))
    return summaries


def _percent(value: tuple[float, float], seeds: int) -> str:
    # one seed has no spread to show: "± 0.00" would claim a measured zero
    return f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}" if seeds > 1 else f"{100 * value[0]:.2f} (1 seed)"


def markdown_table(summaries: Sequence[ArmSummary]) -> str:
    """The comparison as a Markdown table, best test top-1 first."""
    lines = [
        "| arm | model | test top-1 (%) | best val top-1 (%) | seeds | params | MACs / image | fit time / run |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(summaries, key=lambda s: -s.test_top1[0]):
        lines.append(
            f"| {s.arm.label} | `{s.arm.arch}` | {_percent(s.test_top1, len(s.seeds))} | "
            f"{_percent(s.best_val_top1, len(s.seeds))} | "
            f"{len(s.seeds)} | {s.params / 1e6:.3f} M | {s.macs / 1e6:.1f} M | {s.fit_seconds / 60:.1f} min |"
        )
    return "\n".join(lines)


def runs_table(arms: Sequence[Arm], results: Sequence[RunResult]) -> str:
    """Every run as a Markdown table row, by arm then seed."""
    labels = {arm.name: arm.label for arm in arms}
    lines = ["| arm | seed | test top-1 (%) | best val top-1 (%) | fit time | params | MACs / image |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {labels[r.arm]} | {r.seed} | {100 * r.test_top1:.2f} | {100 * r.best_val_top1:.2f} | "
              f"{r.fit_seconds / 60:.1f} min | {r.params:,} | {r.macs / 1e6:.1f} M |"
              for r in sorted(results, key=lambda r: (r.arm, r.seed))]
    return "\n".join(lines)


def plot_comparison(arms: Sequence[Arm], results: Sequence[RunResult], title: str = ""):
    """Two panels: test top-1 per arm (a dot per seed, mean ± std), and validation top-1 per epoch.

    Returns a matplotlib ``Figure`` (drawn without pyplot).
    """
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(12, 4.6)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.2, top=0.88, wspace=0.25)
    colours = [f"C{index}" for index in range(len(arms))]
    for index, (arm, colour) in enumerate(zip(arms, colours)):
        runs = [r for r in results if r.arm == arm.name]
        if not runs:
            continue
        tops = [100 * r.test_top1 for r in runs]
        mean, std = _mean_std(tops)
        left.scatter([index] * len(tops), tops, color=colour, alpha=0.6, zorder=3)
        left.errorbar([index + 0.15], [mean], yerr=[std], color=colour, marker="D", capsize=4, zorder=4)
        epochs = sorted({epoch for r in runs for epoch, _ in r.val_top1})
        curve = [_mean_std([100 * v for r in runs for e, v in r.val_top1 if e == epoch])[0] for epoch in epochs]
        right.plot([e + 1 for e in epochs], curve, marker="o", color=colour, label=arm.label)
    left.set_xticks(range(len(arms)), [arm.label for arm in arms], rotation=20, ha="right", fontsize=8)
    left.set_ylabel("test top-1 (%)")
    left.set_title("test top-1: one dot per seed, diamond = mean ± std")
    left.grid(axis="y", alpha=0.3)
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("completed epochs")
    right.set_ylabel("validation top-1 (%), mean over seeds")
    right.set_title("validation top-1 (raw or EMA weights, as the recipe validates)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure
