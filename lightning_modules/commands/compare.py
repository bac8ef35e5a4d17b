"""``dcls-zoo compare -c configs/compare/quick.yaml``: every arm x seed of a comparison, one table.

Each run is a real ``dcls-zoo fit`` in its own process (the comparison's ``fit_config``, then a
small config of the run's own: seed, ``model.arch``, ``model.model_kwargs``, a CSV logger into
``<out>/runs/<arm>/seed<N>/version_K``; then the comparison's ``fit_args``, then the arm's), so
every arm trains with the same recipe, through the same LightningCLI, with its output in
``fit.log`` beside it. Runs go seed by seed (all arms of seed 0 first), so an interrupted
comparison already compares every arm.

**A dry start first.** Before any fit, each arm is started once with ``fit --dry_run=true``: the
data, every option and the arm's model are built and checked, and the run's settings and their
fingerprint come back (:class:`~lightning_modules.runs.RunIdentity`). One bad arm stops the
comparison before anything trains, with that arm's one-line error.

**A run is reused only if it was made with the same settings.** Run the same command again to
continue: a finished run whose recorded fingerprint matches is read back, an interrupted one with
a matching fingerprint resumes from its ``last.ckpt``, and a run made with other settings (an
edited arm, another ``--fit-arg``, another recipe) is never reused: it is trained again in a new
``version_K``, and ``results.md`` says for every run whether it was reused, resumed, trained or
retrained, and why. After each run ``<out>/`` is rewritten with what is finished: ``results.md``,
``results.csv`` and ``results.png``. A failed run is reported with the end of its log; the others
still run (exit 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from dcls_zoo.figures import save_png
from dcls_zoo.machine import machine_description

from ..checkpoints import load_checkpoint
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
from ..runs import (
    CHECKPOINTS_DIR,
    LAST_NAME,
    RunIdentity,
    RunSummary,
    describe_differences,
    epochs_done,
    runs_newest_first,
    setting_differences,
)
from ..significance import MIN_SEEDS
from .train import DRY_RUN_PREFIX

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


def _fit_command(comparison: Comparison, out: Path, arm: Arm, seed: int, *extra: str) -> list[str]:
    """The ``dcls-zoo fit`` of one run (its run config written beside its runs)."""
    root = _run_root(out, arm, seed)
    root.mkdir(parents=True, exist_ok=True)
    run_config = root / "run.yaml"
    run_config.write_text(yaml.safe_dump(_run_config(out, arm, seed), sort_keys=False))
    return [sys.executable, "-m", "lightning_modules", "fit", "-c", str(comparison.fit_config), "-c", str(run_config),
            *comparison.fit_args, *arm.fit_args, *extra]


def _environment(threads: int | None) -> dict[str, str]:
    environment = dict(os.environ)
    if threads is not None:  # torch reads it at start-up: each of the parallel fits gets its share of the cores
        environment["OMP_NUM_THREADS"] = str(threads)
    return environment


# --------------------------------------------------------------------------------------------
# the dry start


def _dry_run(comparison: Comparison, out: Path, arm: Arm, seed: int, threads: int | None) -> RunIdentity | str:
    """The identity of ``arm``'s runs (seed ``seed``), or the one-line error its fit would stop with."""
    command = _fit_command(comparison, out, arm, seed, "--dry_run=true")
    result = subprocess.run(command, capture_output=True, text=True, env=_environment(threads))
    (out / "runs" / arm.name / "dry_run.log").write_text(f"$ {shlex.join(command)}\n{result.stdout}{result.stderr}")
    line = next((line for line in result.stdout.splitlines() if line.startswith(DRY_RUN_PREFIX)), None)
    if result.returncode == 0 and line is not None:
        identity = RunIdentity.from_json(json.loads(line[len(DRY_RUN_PREFIX):]))
        if identity is not None:
            return identity
    errors = [text for text in result.stderr.splitlines() if "error:" in text]
    return errors[-1] if errors else f"exit {result.returncode}; see {out / 'runs' / arm.name / 'dry_run.log'}"


def _dry_start(comparison: Comparison, out: Path, seed: int, parallel: int, threads: int | None
               ) -> dict[str, RunIdentity] | list[str]:
    """Every arm's identity, or the errors of the arms that would fail (each a line)."""
    print(f"dcls-zoo compare: checking the {len(comparison.arms)} arms (data, options, models) before any fit",
          file=sys.stderr)
    with ThreadPoolExecutor(parallel) as pool:
        found = dict(zip([arm.name for arm in comparison.arms],
                         pool.map(lambda arm: _dry_run(comparison, out, arm, seed, threads), comparison.arms)))
    errors = [f"arm {name}: {result}" for name, result in found.items() if isinstance(result, str)]
    return errors or {name: identity for name, identity in found.items() if isinstance(identity, RunIdentity)}


# --------------------------------------------------------------------------------------------
# which runs to reuse, resume or train


@dataclass
class _Run:
    """One arm x seed of the plan: what to do, and, once done, what came of it."""

    arm: Arm
    seed: int
    identity: RunIdentity
    action: str  # "reuse", "resume" or "train"
    why: str = ""  # how the run was obtained, for results.md
    resume_from: Path | None = None
    result: RunResult | None = None
    outcome: str = ""  # "", "no validation", "failed"


def _plan(out: Path, arm: Arm, seed: int, identity: RunIdentity) -> _Run:
    """Reuse a finished run made with these settings, resume an interrupted one, else train (again)."""
    fingerprint = identity.fingerprint
    runs = runs_newest_first(_run_root(out, arm, seed))
    recorded = {run: RunIdentity.read(run) for run in runs}
    matching = [run for run in runs if recorded[run] is not None and recorded[run].fingerprint == fingerprint]
    for run in matching:
        summary = RunSummary.read(run)
        if summary is not None:
            result = read_run(run, arm.name, seed)
            if result is not None:
                return _Run(arm, seed, identity, "reuse", f"reused: finished earlier with these settings ({run.name})",
                            result=result)
            return _Run(arm, seed, identity, "reuse", f"finished earlier with these settings ({run.name})",
                        outcome="no validation")
        last = run / CHECKPOINTS_DIR / LAST_NAME
        if last.is_file() and not _trained_to_the_end(last, identity):
            return _Run(arm, seed, identity, "resume", f"resumed from {run.name}/{CHECKPOINTS_DIR}/{LAST_NAME}",
                        resume_from=last)
    if not runs:
        return _Run(arm, seed, identity, "train", "trained")
    newest = recorded[runs[0]]
    if newest is None:
        why = f"retrained: {runs[0].name} records no settings (made before dcls-zoo recorded them)"
    elif matching:
        why = (f"trained again: the earlier run with these settings ({matching[0].name}) stopped before a checkpoint "
               "it could resume from, or after its training but before its test")
    else:
        changed = describe_differences(setting_differences(newest.settings, identity.settings), runs[0].name, "now")
        why = f"retrained: settings changed since {runs[0].name} ({changed})"
    return _Run(arm, seed, identity, "train", why)


def _trained_to_the_end(last: Path, identity: RunIdentity) -> bool:
    """Whether ``last.ckpt`` already holds every epoch the run asks for (nothing left to resume), or
    cannot be read (nothing to resume from either)."""
    try:
        done = epochs_done(load_checkpoint(last, mmap=True))
    except ValueError:
        return True
    max_epochs = (identity.settings.get("trainer") or {}).get("max_epochs")
    return isinstance(max_epochs, int) and max_epochs > 0 and done is not None and done >= max_epochs


def _fit(comparison: Comparison, out: Path, job: _Run, threads: int | None) -> int:
    """Run one fit (output appended to its ``fit.log``); returns its exit status."""
    extra = [f"--ckpt_path={job.resume_from}"] if job.resume_from is not None else []
    command = _fit_command(comparison, out, job.arm, job.seed, *extra)
    with open(_run_root(out, job.arm, job.seed) / "fit.log", "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        return subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=_environment(threads))


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _read_back(out: Path, job: _Run) -> None:
    """Fill in what the fit of ``job`` left: its result, or that it ended without a validation score."""
    for run in runs_newest_first(_run_root(out, job.arm, job.seed)):
        recorded = RunIdentity.read(run)
        if recorded is None or recorded.fingerprint != job.identity.fingerprint:
            continue
        job.result = read_run(run, job.arm.name, job.seed)
        if job.result is None and RunSummary.read(run) is not None:
            job.outcome = "no validation"
        return


def as_run(identities: dict[str, RunIdentity], seeds: tuple[int, ...], overrides: tuple[str, ...]) -> str:
    """What the runs actually were, read from their settings (not from the comparison's title):
    ``"5 epochs, 5 seeds (0, 1, 2, 3, 4), with --trainer.max_epochs=5"`` (epochs per arm when they differ)."""

    def length(identity: RunIdentity) -> str:
        trainer = identity.settings.get("trainer") or {}
        epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
        text = f"{epochs} epoch{'s' if epochs != 1 else ''}" if isinstance(epochs, int) and epochs >= 0 else ""
        if isinstance(steps, int) and steps > 0:
            text += f"{' or ' if text else ''}at most {steps} steps"
        return text or "as long as the trainer's defaults run"

    lengths = {name: length(identity) for name, identity in identities.items()}
    if len(set(lengths.values())) == 1:
        parts = [next(iter(lengths.values()))]
    else:
        parts = ["per arm " + "; ".join(f"{name} {text}" for name, text in lengths.items())]
    listed = ", ".join(map(str, seeds)) if len(seeds) <= 6 else f"{seeds[0]}, ..., {seeds[-1]}"
    parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({listed})")
    return ", ".join(parts) + (f", with {' '.join(overrides)}" if overrides else "")


def _write_results(comparison: Comparison, out: Path, command: str, jobs: list[_Run], machine: str,
                   run_as: str) -> None:
    results = [job.result for job in jobs if job.result is not None]
    summaries = summarise(comparison.arms, results)
    failed = [f"{job.arm.name}/seed{job.seed}" for job in jobs if job.outcome == "failed"]
    unscored = [f"{job.arm.name}/seed{job.seed}" for job in jobs if job.outcome == "no validation"]
    status = f"{len(results)} of {len(jobs)} runs finished" + (f"; failed: {', '.join(failed)}" if failed else "")
    if unscored:
        status += f"; finished without a validation score: {', '.join(unscored)}"
    text = [
        f"# {comparison.title or comparison.path.stem}", "",
        f"As run: {run_as}.", "",
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
        *_provenance_section(jobs),
        "![results](results.png)" if results else "(no plot yet: no run has finished)", "",
    ]
    (out / "results.md").write_text("\n".join(text))
    with open(out / "results.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(csv_rows(comparison.arms, results, comparison.reference))
    if results:
        title = f"{comparison.title}\n({run_as})" if comparison.title else run_as
        save_png(plot_comparison(comparison.arms, results, title, comparison.reference), out / "results.png")


def _provenance_section(jobs: list[_Run]) -> list[str]:
    """How each run was obtained: reused (same fingerprint), resumed, trained, or retrained and why."""
    lines = ["## How each run was obtained", "",
             "A finished run is reused only when the fingerprint of its settings (`run.json`: the resolved "
             "config without what only logs or shows) is the one this command's dry start computed.", "",
             "| arm | seed | fingerprint | how |", "|---|---:|---|---|"]
    for job in sorted(jobs, key=lambda job: (job.arm.name, job.seed)):
        how = job.why + {"failed": "; FAILED", "no validation": "; no validation score"}.get(job.outcome, "")
        lines.append(f"| {job.arm.label} | {job.seed} | `{job.identity.fingerprint[:12]}` | {how} |")
    return [*lines, ""]


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


def _fail(message: str) -> int:
    print(f"dcls-zoo compare: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run (or continue) a comparison; exit 0 when every run finished with a score, 1 if one did not,
    2 on bad input (nothing trained)."""
    try:
        comparison = load_comparison(args.config)
    except (FileNotFoundError, ValueError, yaml.YAMLError) as error:
        return _fail(str(error))
    if args.parallel < 1:
        return _fail(f"--parallel must be >= 1, got {args.parallel}")
    arms = comparison.arms
    if args.arms:
        unknown = sorted(set(args.arms) - {arm.name for arm in arms})
        if unknown:
            return _fail(f"--arms: no arm {', '.join(unknown)} in {comparison.path}; "
                         f"arms: {', '.join(arm.name for arm in arms)}")
        arms = tuple(arm for arm in arms if arm.name in args.arms)
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        return _fail(f"--seeds lists a seed twice ({' '.join(map(str, args.seeds))}): each seed is one run per arm")
    seeds = tuple(args.seeds) if args.seeds else comparison.seeds
    comparison = Comparison(comparison.path, comparison.fit_config, (*comparison.fit_args, *args.fit_arg), seeds, arms,
                            comparison.title, comparison.reference)
    out = (args.out or Path("logs") / "compare" / comparison.path.stem).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = _command_line(args)
    plan = [(arm, seed) for seed in seeds for arm in arms]
    parallel = max(1, min(args.parallel, len(plan)))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None

    identities = _dry_start(comparison, out, seeds[0], parallel, threads)
    if isinstance(identities, list):
        for error in identities:
            print(f"dcls-zoo compare: {error}", file=sys.stderr)
        return _fail(f"{len(identities)} of {len(arms)} arms would fail (above); nothing was trained")
    run_as = as_run(identities, seeds, tuple(args.fit_arg))
    print(f"dcls-zoo compare: {len(arms)} arms x {len(seeds)} seeds = {len(plan)} fits of {comparison.fit_config.name} "
          f"({run_as}) into {out}" + (f", {parallel} at a time with {threads} thread(s) each" if parallel > 1 else ""),
          file=sys.stderr)
    # the machine and how the fits share it, read once for every rewrite of results.md
    machine = machine_description() + (f"; {parallel} fits at a time, {threads} thread(s) each" if parallel > 1
                                       else f"; one fit at a time, {os.cpu_count()} cores")
    jobs = [_plan(out, arm, seed, identities[arm.name].with_seed(seed)) for arm, seed in plan]
    for job in jobs:
        if job.action == "reuse":
            found = f"test top-1 {100 * job.result.test_top1:.2f}%" if job.result else "no validation score"
            print(f"{job.arm.name} seed {job.seed}: {job.why}, {found}", file=sys.stderr)
        elif job.why.startswith("retrained"):
            print(f"{job.arm.name} seed {job.seed}: {job.why}", file=sys.stderr)
    to_run = [job for job in jobs if job.action != "reuse"]

    def fit(job: _Run) -> tuple[int, float]:
        started = time.perf_counter()
        return _fit(comparison, out, job, threads), time.perf_counter() - started

    with tqdm(total=len(jobs), initial=len(jobs) - len(to_run), desc="compare", unit="fit", file=sys.stderr,
              dynamic_ncols=True) as bar, ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(fit, job): job for job in to_run}
        for future in as_completed(futures):
            job = futures[future]
            status, seconds = future.result()
            _read_back(out, job)
            log = _run_root(out, job.arm, job.seed) / "fit.log"
            if job.result is not None and status == 0:
                bar.write(f"{job.arm.name} seed {job.seed}: test top-1 {100 * job.result.test_top1:.2f}% "
                          f"(best val {100 * job.result.best_val_top1:.2f}%) in {seconds / 60:.1f} min "
                          f"({job.why})", file=sys.stderr)
            elif status == 0 and job.outcome == "no validation":
                bar.write(f"{job.arm.name} seed {job.seed}: finished without a validation score: no validation "
                          f"epoch ran, so no checkpoint was chosen by it (check --trainer.limit_val_batches and "
                          f"check_val_every_n_epoch); see {log}", file=sys.stderr)
            else:
                job.outcome = "failed"
                bar.write(f"{job.arm.name} seed {job.seed}: FAILED (exit {status}); the end of {log}:\n{_tail(log)}",
                          file=sys.stderr)
            bar.update()
            _write_results(comparison, out, command, jobs, machine, run_as)
    if not to_run:  # every run had finished earlier: the loop wrote nothing
        _write_results(comparison, out, command, jobs, machine, run_as)
    results = [job.result for job in jobs if job.result is not None]
    print(markdown_table(summarise(arms, results)))
    written = [str(out / name) for name in ("results.md", "results.csv", "results.png") if (out / name).is_file()]
    print(f"\nresults: {', '.join(written)}", file=sys.stderr)
    failed = [f"{job.arm.name}/seed{job.seed}" for job in jobs if job.outcome == "failed"]
    unscored = [f"{job.arm.name}/seed{job.seed}" for job in jobs if job.outcome == "no validation"]
    if unscored:
        print(f"dcls-zoo compare: {len(unscored)} run(s) finished without a validation score: {', '.join(unscored)}; "
              "rerunning the same command reuses them as they are: change the options so that validation runs",
              file=sys.stderr)
    if failed:
        print(f"dcls-zoo compare: {len(failed)} run(s) failed: {', '.join(failed)}; run the same command to retry them",
              file=sys.stderr)
    return 1 if failed or unscored else 0
