"""``dcls-zoo compare -c configs/compare/quick.yaml``: every arm x seed of a comparison, one table.

Each run is a real ``dcls-zoo fit`` in its own process (the comparison's ``fit_config``, then a
small config of the run's own: seed, ``model.arch``, ``model.model_kwargs``, a CSV logger into
``<out>/runs/<arm>/seed<N>/version_K``; then the comparison's ``fit_args``, then the arm's), so
every arm trains with the same recipe, through the same LightningCLI, with its output in
``fit.log`` beside it. Runs go seed by seed (all arms of
seed 0 first), so an interrupted comparison already compares every arm.

After each run ``<out>/`` is rewritten with what is finished: ``results.md`` (the command, the
machine, the table, every run), ``results.csv`` and ``results.png``. Run the same command again
to continue: finished runs are read back, and a run stopped mid-way resumes exactly from its
``last.ckpt``. A failed run is reported with the end of its log; the others still run (exit 1).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml
from tqdm import tqdm

from dcls_zoo.figures import save_png
from dcls_zoo.machine import machine_description

from ..comparison import (
    Arm,
    Comparison,
    RunResult,
    csv_rows,
    differences,
    differences_table,
    load_comparison,
    markdown_table,
    movement_table,
    plot_comparison,
    read_run,
    runs_table,
    summarise,
)
from ..runs import CHECKPOINTS_DIR, LAST_NAME, runs_newest_first
from ..significance import MIN_SEEDS

__all__ = ["run"]


def _run_root(out: Path, arm: Arm, seed: int) -> Path:
    return out / "runs" / arm.name / f"seed{seed}"


def _run_config(out: Path, arm: Arm, seed: int) -> dict:
    """The run's own config, applied after the comparison's fit config."""
    return {
        "seed_everything": seed,
        "model": {"arch": arm.arch, "model_kwargs": arm.model_kwargs},
        "trainer": {
            "logger": [{
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(out / "runs" / arm.name), "name": f"seed{seed}"},
            }],
            "enable_progress_bar": False,  # the log file gets one line per epoch, not a bar per step
        },
        "test_after_fit": True,
        "export_after_fit": False,
    }


def _state(out: Path, arm: Arm, seed: int) -> tuple[RunResult | None, Path | None]:
    """``(result, None)`` of a finished run, ``(None, last.ckpt)`` of one to resume, else ``(None, None)``."""
    newest = runs_newest_first(_run_root(out, arm, seed))
    if not newest:
        return None, None
    result = read_run(newest[0], arm.name, seed)
    if result is not None:
        return result, None
    last = newest[0] / CHECKPOINTS_DIR / LAST_NAME
    return None, (last if last.is_file() else None)


def _fit(comparison: Comparison, out: Path, arm: Arm, seed: int, resume: Path | None, threads: int | None) -> int:
    """Run one fit (output appended to its ``fit.log``); returns its exit status."""
    root = _run_root(out, arm, seed)
    root.mkdir(parents=True, exist_ok=True)
    run_config = root / "run.yaml"
    run_config.write_text(yaml.safe_dump(_run_config(out, arm, seed), sort_keys=False))
    command = [sys.executable, "-m", "lightning_modules", "fit", "-c", str(comparison.fit_config),
               "-c", str(run_config), *comparison.fit_args, *arm.fit_args]
    if resume is not None:
        command.append(f"--ckpt_path={resume}")
    environment = dict(os.environ)
    if threads is not None:  # torch reads it at start-up: each of the parallel fits gets its share of the cores
        environment["OMP_NUM_THREADS"] = str(threads)
    with open(root / "fit.log", "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        return subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _write_results(comparison: Comparison, out: Path, command: str, results: list[RunResult],
                   planned: int, failed: list[str], machine: str) -> None:
    summaries = summarise(comparison.arms, results)
    status = f"{len(results)} of {planned} runs finished" + (f"; failed: {', '.join(failed)}" if failed else "")
    text = [
        f"# {comparison.title or comparison.path.stem}", "",
        f"Command: `{command}`", "",
        f"Comparison: `{comparison.path}` (fit config `{comparison.fit_config.name}`"
        + (f", with `{' '.join(comparison.fit_args)}`" if comparison.fit_args else "") + ")"
        + ("; an arm's own options (the last column) come after these." if any(a.fit_args for a in comparison.arms)
           else "."), "",
        f"Machine: {machine}.", "",
        f"Status: {status}.", "",
        "Mean ± sample standard deviation over the seeds. Test top-1 is that of each run's checkpoint "
        "with the best validation top-1. MACs per image are counted in one forward of the trained "
        "network (a DCLS layer convolves the part of its window its elements reach, so its count "
        "depends on the trained positions); fit time is the wall time of `trainer.fit`, which on a shared "
        "machine includes the time spent waiting for its cores: it is a speed measurement only for runs "
        "that had the machine to themselves.", "",
        markdown_table(summaries), "",
        *_reference_section(comparison, results),
        *_movement_section(summaries),
        "## Every run", "", runs_table(comparison.arms, results), "",
        "![results](results.png)", "",
    ]
    (out / "results.md").write_text("\n".join(text))
    with open(out / "results.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(csv_rows(comparison.arms, results, comparison.reference))
    if results:
        figure = plot_comparison(comparison.arms, results, comparison.title, comparison.reference)
        save_png(figure, out / "results.png")


def _reference_section(comparison: Comparison, results: list[RunResult]) -> list[str]:
    """results.md's test of every arm against the reference arm (nothing without one)."""
    if comparison.reference is None:
        return []
    reference = next((arm for arm in comparison.arms if arm.name == comparison.reference), None)
    heading = f"## Against the reference: {reference.label if reference else comparison.reference}"
    found = differences(comparison.arms, results, comparison.reference)
    if reference is None or not found:
        why = "is not among the arms run" if reference is None else "has no finished run yet, or no other arm has"
        return [heading, "", f"The reference arm `{comparison.reference}` {why}.", ""]
    return [
        heading, "",
        "Difference of the mean test top-1 (arm minus reference, percentage points), its 95% confidence "
        "interval and the two-sided p-value of Welch's t-test (unequal variances; Welch-Satterthwaite degrees "
        f"of freedom; `scipy.stats.ttest_ind(equal_var=False)`). With fewer than {MIN_SEEDS} seeds in either "
        "arm no interval or p-value is given.", "",
        differences_table(found, reference), "",
    ]


def _movement_section(summaries: list) -> list[str]:
    table = movement_table(summaries)
    if not table:
        return []
    return [
        "## How far the positions moved", "",
        "Mean |P - P_initial| in pixels per position group (over every element and axis), between the "
        "positions each run started from and its tested weights; mean ± std over the seeds.", "",
        table, "",
    ]


def _command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it again (recorded in results.md)."""
    words = ["dcls-zoo", "compare", "-c", str(args.config)]
    if args.out is not None:
        words += ["--out", str(args.out)]
    if args.seeds:
        words += ["--seeds", *map(str, args.seeds)]
    if args.arms:
        words += ["--arms", *args.arms]
    if args.parallel != 1:
        words += ["--parallel", str(args.parallel)]
    words += [f"--fit-arg={arg}" for arg in args.fit_arg]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) a comparison; exit 0 when every run finished, 1 if one failed, 2 on bad input."""
    try:
        comparison = load_comparison(args.config)
    except (FileNotFoundError, ValueError, yaml.YAMLError) as error:
        print(f"dcls-zoo compare: error: {error}", file=sys.stderr)
        return 2
    if args.parallel < 1:
        print(f"dcls-zoo compare: error: --parallel must be >= 1, got {args.parallel}", file=sys.stderr)
        return 2
    arms = comparison.arms
    if args.arms:
        unknown = sorted(set(args.arms) - {arm.name for arm in arms})
        if unknown:
            print(f"dcls-zoo compare: error: --arms: no arm {', '.join(unknown)} in {comparison.path}; "
                  f"arms: {', '.join(arm.name for arm in arms)}", file=sys.stderr)
            return 2
        arms = tuple(arm for arm in arms if arm.name in args.arms)
    seeds = tuple(args.seeds) if args.seeds else comparison.seeds
    comparison = Comparison(comparison.path, comparison.fit_config, (*comparison.fit_args, *args.fit_arg), seeds, arms,
                            comparison.title, comparison.reference)
    out = (args.out or Path("logs") / "compare" / comparison.path.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = _command_line(args)
    plan = [(arm, seed) for seed in seeds for arm in arms]
    parallel = max(1, min(args.parallel, len(plan)))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    print(f"dcls-zoo compare: {len(arms)} arms x {len(seeds)} seeds = {len(plan)} fits of {comparison.fit_config.name} "
          f"into {out}" + (f", {parallel} at a time with {threads} thread(s) each" if parallel > 1 else ""),
          file=sys.stderr)
    # the machine and how the fits share it, read once for every rewrite of results.md
    machine = machine_description() + (f"; {parallel} fits at a time, {threads} thread(s) each" if parallel > 1
                                       else f"; one fit at a time, {os.cpu_count()} cores")
    results: list[RunResult] = []
    failed: list[str] = []
    to_run = []
    for arm, seed in plan:
        result, resume = _state(out, arm, seed)
        if result is not None:
            print(f"{arm.name} seed {seed}: finished earlier, test top-1 {100 * result.test_top1:.2f}%", file=sys.stderr)
            results.append(result)
        else:
            to_run.append((arm, seed, resume))

    def fit(arm: Arm, seed: int, resume: Path | None) -> tuple[int, float]:
        started = time.perf_counter()
        return _fit(comparison, out, arm, seed, resume, threads), time.perf_counter() - started

    with tqdm(total=len(plan), initial=len(results), desc="compare", unit="fit", file=sys.stderr,
              dynamic_ncols=True) as bar, ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(fit, *job): job for job in to_run}
        for future in as_completed(futures):
            arm, seed, resume = futures[future]
            status, seconds = future.result()
            result, _ = _state(out, arm, seed)
            if status != 0 or result is None:
                failed.append(f"{arm.name}/seed{seed}")
                log = _run_root(out, arm, seed) / "fit.log"
                bar.write(f"{arm.name} seed {seed}: FAILED (exit {status}); the end of {log}:\n{_tail(log)}",
                          file=sys.stderr)
            else:
                results.append(result)
                how = "resumed, " if resume is not None else ""
                bar.write(f"{arm.name} seed {seed}: test top-1 {100 * result.test_top1:.2f}% "
                          f"(best val {100 * result.best_val_top1:.2f}%) in {how}{seconds / 60:.1f} min", file=sys.stderr)
            bar.update()
            _write_results(comparison, out, command, results, len(plan), failed, machine)
    if not to_run:  # every run had finished earlier: the loop wrote nothing
        _write_results(comparison, out, command, results, len(plan), failed, machine)
    print(markdown_table(summarise(arms, results)))
    print(f"\nresults: {out / 'results.md'} (table, every run), {out / 'results.png'}", file=sys.stderr)
    if failed:
        print(f"dcls-zoo compare: {len(failed)} run(s) failed: {', '.join(failed)}; run the same command to retry them",
              file=sys.stderr)
        return 1
    return 0

