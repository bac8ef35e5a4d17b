"""``dcls-zoo compare``: the comparison file, the statistics and the table, and the real command run
on the embedded Fashion-MNIST (shortened fits), continued after an interruption and with a failing arm."""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, short_fit
from PIL import Image
from scipy import stats

import dcls_zoo
from lightning_modules.commands.main import main
from lightning_modules.comparison import (
    Arm,
    RunResult,
    csv_rows,
    differences,
    differences_table,
    load_comparison,
    markdown_table,
    movement_table,
    plot_comparison,
    summarise,
)

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _valid(**changes) -> dict:
    data = {"fit_config": str(QUICKSTART), "seeds": [0, 1],
            "arms": [{"name": "dcls", "arch": "convnext_dcls_atto"}, {"name": "k7", "arch": "convnext_k7_atto"}]}
    data.update(changes)
    return data


# the arms of each shipped comparison, and the one the others are tested against
SHIPPED = {
    "quick": ({"dcls", "k7", "dil2", "dense"}, "k7"),
    "full": ({"dcls", "k7", "dil2", "dense"}, "k7"),
    "ablation": ({"dcls", "dcls_fast", "dcls_frozen", "k7", "dense"}, "dcls_frozen"),
    "convmixer": ({"dcls", "dcls_fast", "dcls_frozen", "k5", "k13"}, "dcls_frozen"),
    "full_ablation": ({"dcls", "dcls_fast", "dcls_frozen", "k7"}, "dcls_frozen"),
}


def test_the_shipped_comparisons_load_and_name_registered_models():
    paths = sorted((ROOT / "configs" / "compare").glob("*.yaml"))
    assert {path.stem for path in paths} >= set(SHIPPED)
    for path in paths:
        comparison = load_comparison(path)
        assert comparison.fit_config.is_file() and len(comparison.seeds) >= 2
        if path.stem in SHIPPED:
            assert ({arm.name for arm in comparison.arms}, comparison.reference) == SHIPPED[path.stem]
        for arm in comparison.arms:
            model = dcls_zoo.create_model(arm.arch, num_classes=10, in_chans=1, **arm.model_kwargs)
            assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("changes,message", [
    ({"seeds": []}, "seeds: must be a non-empty list of integers"),
    ({"seeds": [0, 0]}, "seeds: lists a seed twice"),
    ({"fit_config": "missing.yaml"}, "fit_config: .*missing.yaml does not exist"),
    ({"arms": [{"name": "a/b", "arch": "x"}]}, r"arms\[0\].name: 'a/b' must be letters"),
    ({"arms": [{"name": "a", "arch": "x"}, {"name": "a", "arch": "y"}]}, "arms: names must differ"),
    ({"arms": [{"name": "a", "arch": "x", "kwargs": {}}]}, r"arms\[0\]: unknown key\(s\) \['kwargs'\]"),
    ({"epochs": 3}, "epochs: unknown key"),
    ({"arms": [{"name": "a", "arch": "x", "fit_args": "--model.position_lr_scale=50"}]},
     r"arms\[0\].fit_args: must be a list of option strings, e.g. \[--model.position_lr_scale=50\]"),
    ({"arms": [{"name": "a", "arch": "x", "fit_args": ["--model.arch=convnext_k7_atto"]}]},
     r"arms\[0\].fit_args: '--model.arch=convnext_k7_atto' sets what the arm's arch sets"),
    ({"arms": [{"name": "a", "arch": "x", "fit_args": ["--seed_everything=3"]}]},
     r"arms\[0\].fit_args: '--seed_everything=3' sets what the comparison's seeds set"),
    ({"reference": "dense"}, r"reference: must name one of the arms \(dcls, k7\), got 'dense'"),
])
def test_a_bad_comparison_file_names_the_key(tmp_path, changes, message):
    path = _write(tmp_path / "bad.yaml", _valid(**changes))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_comparison(path)


def test_a_comparison_file_can_start_from_another(tmp_path):
    _write(tmp_path / "quick.yaml", _valid(fit_args=["--trainer.max_epochs=5"], title="quick"))
    (tmp_path / "sub").mkdir()
    full = _write(tmp_path / "sub" / "full.yaml", {"base": "../quick.yaml", "seeds": [3], "fit_args": ["--x=1"]})
    comparison = load_comparison(full)
    assert comparison.seeds == (3,) and comparison.fit_args == ("--x=1",) and comparison.title == "quick"
    assert [arm.name for arm in comparison.arms] == ["dcls", "k7"] and comparison.fit_config == QUICKSTART
    _write(tmp_path / "loop.yaml", {"base": "loop.yaml"})
    with pytest.raises(ValueError, match="base: the bases form a loop"):
        load_comparison(tmp_path / "loop.yaml")


def _result(arm: str, seed: int, top1: float) -> RunResult:
    return RunResult(arm, seed, top1, top1 + 0.01, 60.0 * (seed + 1), 1000, 2_000_000, ((0, top1 - 0.1), (1, top1)))


def test_the_table_gives_mean_and_sample_std_over_seeds_best_first():
    arms = [Arm("a", "arm A", "convnext_k7_atto"), Arm("b", "arm B", "convnext_dcls_atto")]
    results = [_result("a", 0, 0.80), _result("a", 1, 0.84), _result("a", 2, 0.83), _result("b", 0, 0.90)]
    (a, b) = summarise(arms, results)
    assert a.test_top1 == (pytest.approx(statistics.mean([0.80, 0.84, 0.83])),
                           pytest.approx(statistics.stdev([0.80, 0.84, 0.83])))
    assert b.test_top1 == (pytest.approx(0.90), 0.0) and b.seeds == (0,)
    assert a.fit_seconds == pytest.approx(120.0)
    table = markdown_table([a, b]).splitlines()
    assert table[2].startswith("| arm B |") and table[3].startswith("| arm A |")  # best first
    mean, std = 100 * statistics.mean([0.80, 0.84, 0.83]), 100 * statistics.stdev([0.80, 0.84, 0.83])
    assert f"| {mean:.2f} ± {std:.2f} |" in table[3]
    assert "| 90.00 (1 seed) | 91.00 (1 seed) | 1 |" in table[2]  # no spread claimed from one seed
    figure = plot_comparison(arms, results, "title")
    left, right = figure.axes
    assert left.get_ylabel() == "test top-1 (%)" and right.get_xlabel() == "completed epochs"
    assert [t.get_text() for t in left.get_xticklabels()] == ["arm A", "arm B"]
    assert sorted(point[1] for point in left.collections[0].get_offsets()) == pytest.approx([80.0, 83.0, 84.0])


def test_an_arm_carries_its_own_fit_options():
    comparison = load_comparison(ROOT / "configs" / "compare" / "ablation.yaml")
    arms = {arm.name: arm for arm in comparison.arms}
    assert arms["dcls_fast"].fit_args == ("--model.position_lr_scale=100",)
    assert arms["dcls_frozen"].fit_args == ("--model.freeze_positions=true",) and arms["dcls"].fit_args == ()
    assert arms["dcls_frozen"].model_kwargs == arms["dcls"].model_kwargs  # the same network, frozen
    assert comparison.fit_args == ("--trainer.max_epochs=5", "--data.init_args.max_shift=2")  # quick.yaml's


def _shifted(arm: str, seed: int, top1: float, shifts: dict[str, float], frozen: bool = False) -> RunResult:
    return RunResult(arm, seed, top1, top1, 60.0, 1000, 2_000_000, ((0, top1),), tuple(shifts.items()), frozen)


def test_each_arm_against_the_reference_with_welchs_test_and_the_positions_moved():
    arms = [Arm("learned", "learned", "convnext_dcls_atto", fit_args=("--model.position_lr_scale=50",)),
            Arm("frozen", "frozen", "convnext_dcls_atto", fit_args=("--model.freeze_positions=true",)),
            Arm("two", "two seeds", "convnext_dcls_atto"), Arm("k7", "dense 7x7", "convnext_k7_atto")]
    learned, frozen, two = [0.81, 0.83, 0.82, 0.84], [0.80, 0.79, 0.805], [0.9, 0.91]
    results = ([_shifted("learned", s, v, {"stages.0": 2.0 + s, "stages.1": 1.0}) for s, v in enumerate(learned)]
               + [_shifted("frozen", s, v, {"stages.0": 0.0, "stages.1": 0.0}, True) for s, v in enumerate(frozen)]
               + [_shifted("two", s, v, {"stages.0": 0.5}) for s, v in enumerate(two)]
               + [_shifted("k7", 0, 0.5, {})])
    found = differences(arms, results, "frozen")
    assert [arm.name for arm, _ in found] == ["learned", "two", "k7"]
    welch = stats.ttest_ind(learned, frozen, equal_var=False)
    interval = welch.confidence_interval(0.95)
    table = differences_table(found, arms[1]).splitlines()
    assert table[0].startswith("| arm | minus frozen (points) | 95% CI (Welch) | p (Welch's t-test) |")
    diff = 100 * (statistics.mean(learned) - statistics.mean(frozen))
    assert table[2] == (f"| learned | {diff:+.2f} | [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}] | "
                        f"{welch.pvalue:.3g} | 4, 3 |")
    assert table[3] == f"| two seeds | {100 * (0.905 - statistics.mean(frozen)):+.2f} | - | not enough seeds (2 and 3; 3 needed) | 2, 3 |"
    assert differences(arms, results, "nobody") == [] and differences(arms, results, None) == []

    summaries = summarise(arms, results)
    main_table = markdown_table(summaries).splitlines()
    assert main_table[0].endswith("| fit time / run | options |")
    assert main_table[3].startswith("| learned |") and main_table[3].endswith("| `--model.position_lr_scale=50` |")
    movement = movement_table(summaries).splitlines()
    assert movement[0] == "| arm | options | stages.0 | stages.1 |"
    assert movement[2] == (f"| learned | `--model.position_lr_scale=50` | {3.5:.2f} ± {statistics.stdev([2, 3, 4, 5]):.2f} "
                           f"| 1.00 ± 0.00 |")
    assert movement[4] == "| two seeds | - | 0.50 ± 0.00 | - |" and len(movement) == 5  # k7 moves nothing

    rows = csv_rows(arms, results, "frozen")
    header = rows[0]
    assert header[:4] == ["arm", "arch", "arm_fit_args", "seed"] and "shift_px:stages.1" in header
    by_run = {(row[0], row[3]): dict(zip(header, row)) for row in rows[1:]}
    first = by_run[("learned", 0)]
    assert first["arm_fit_args"] == "--model.position_lr_scale=50" and first["shift_px:stages.0"] == 2.0
    assert first["diff_vs_reference"] == pytest.approx(diff / 100) and first["welch_p"] == pytest.approx(welch.pvalue)
    assert (first["ci95_low"], first["ci95_high"]) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert by_run[("two", 1)]["welch_p"] == "" and by_run[("two", 1)]["diff_vs_reference"] != ""
    assert by_run[("frozen", 0)]["positions_frozen"] is True and by_run[("frozen", 0)]["diff_vs_reference"] == ""
    assert by_run[("k7", 0)]["shift_px:stages.0"] == "" and by_run[("k7", 0)]["positions_frozen"] == ""

    figure = plot_comparison(arms, results, "title", reference="frozen")
    _, delta, _, moved = figure.axes  # test top-1, differences, validation curves, positions
    assert delta.get_xlabel() == "test top-1 minus frozen (points)"
    assert [t.get_text() for t in delta.get_yticklabels()] == ["dense 7x7", "two seeds", "learned"]
    (bar,) = [c for c in delta.containers]  # one interval: the arm with too few seeds gets a bare point
    (segment,) = bar.lines[2][0].get_segments()
    assert segment[:, 0] == pytest.approx([100 * interval.low, 100 * interval.high])
    assert moved.get_ylabel() == "mean |P - P_initial| (px)"
    assert [t.get_text() for t in moved.get_xticklabels()] == ["stages.0", "stages.1"]
    assert len(plot_comparison(arms[3:], results[-1:]).axes) == 2  # no reference, nothing moved: two panels


def _table_rows(results_md: str) -> dict[str, list[str]]:
    """The main table's rows by arm label (the rows whose model cell is a code span)."""
    rows = {}
    for line in results_md.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 9 and cells[1].startswith("`"):
            rows[cells[0]] = cells
    return rows


# a shortened quickstart: 2 steps of real Fashion-MNIST images per fit, narrow networks
_SHORT = short_fit(epochs=1, train_batches=2, val_batches=1, test_batches=2, batch_size=16, warmup_epochs=0.5)
_NARROW = {"stem": "small", "stem_stride": 2, "dims": [8, 16, 24, 32]}


def _compare(path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_modules", "compare", "-c", str(path), "--out", str(out), *extra]
    # the checkout under test first on the path (run from elsewhere, python -m finds an installed copy)
    # (and the tests' helpers, for the callbacks that interrupt a run)
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=path.parent, env=environment)


@pytest.mark.slow
def test_compare_checks_every_arm_before_any_fit_and_reuses_only_runs_made_with_the_same_settings(tmp_path):
    arms = [  # the DCLS arm trains two epochs: one run of it is interrupted after the first
        {"name": "dcls", "label": "DCLS", "arch": "convnext_dcls_atto",
         "model_kwargs": {**_NARROW, "dcls_kernel_size": [17, 15, 7, 3]}, "fit_args": ["--trainer.max_epochs=2"]},
        {"name": "k7", "label": "7x7", "arch": "convnext_k7_atto", "model_kwargs": _NARROW},
        {"name": "broken", "arch": "no_such_model"},
    ]
    out = tmp_path / "results"
    # a broken arm stops the comparison at its dry start, before anything trains
    path = _write(tmp_path / "short.yaml", {"fit_config": str(QUICKSTART), "fit_args": _SHORT, "seeds": [0, 1],
                                            "arms": arms})
    refused = _compare(path, out, "--parallel", "2")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "arm broken:" in refused.stderr and "no_such_model" in refused.stderr
    assert "1 of 3 arms would fail (above); nothing was trained" in refused.stderr
    assert not list(out.glob("runs/*/seed*/version_*"))

    # an arm whose fits run no validation: reported as exactly that, not as a failure, and not retried
    arms[2] = {"name": "noval", "label": "7x7 unvalidated", "arch": "convnext_k7_atto", "model_kwargs": _NARROW,
               "fit_args": ["--trainer.limit_val_batches=0"]}
    path = _write(path, {"fit_config": str(QUICKSTART), "fit_args": _SHORT, "seeds": [0, 1], "arms": arms})
    # one run interrupted after its first epoch, as a Ctrl-C would leave it: last.ckpt, no summary (the
    # interrupting callback only watches, so the run keeps its fingerprint)
    cut = _compare(path, out, "--seeds", "1", "--arms", "dcls", "--fit-arg=--trainer.callbacks+=run_helpers.StopAfterEpoch")
    assert cut.returncode == 0, cut.stderr[-3000:]
    interrupted = next((out / "runs" / "dcls" / "seed1").glob("version_*"))
    (interrupted / "summary.json").unlink()
    first = _compare(path, out, "--parallel", "2")
    assert first.returncode == 1, first.stderr[-3000:]
    assert "6 fits" in first.stderr and "2 at a time" in first.stderr and "(per arm dcls 2 epochs; k7 1 epoch; noval 1 epoch, 2 seeds (0, 1))" in first.stderr
    assert re.search(r"dcls seed 1: test top-1 [0-9.]+% \(best val [0-9.]+%\) in [0-9.]+ min \(resumed from", first.stderr)
    log = (interrupted.parent / "fit.log").read_text()
    assert f"--ckpt_path={interrupted / 'checkpoints' / 'last.ckpt'}" in log
    assert [p.name for p in interrupted.parent.glob("version_*")] == [interrupted.name]  # the same run folder
    assert "noval seed 0: finished without a validation score" in first.stderr and "FAILED" not in first.stderr
    results_md = (out / "results.md").read_text()
    assert "Status: 4 of 6 runs finished; finished without a validation score: noval/seed0, noval/seed1." in results_md
    assert "As run: per arm dcls 2 epochs; k7 1 epoch; noval 1 epoch, 2 seeds (0, 1)." in results_md and "Machine: CPU" in results_md

    # the table against each run's own summary.json, and the parameters against the models themselves
    rows = _table_rows(results_md)
    assert set(rows) == {"DCLS", "7x7"}
    for arm in arms[:2]:
        summaries = [json.loads(next((out / "runs" / arm["name"] / f"seed{seed}").glob("version_*/summary.json"))
                                .read_text()) for seed in (0, 1)]
        tops = [100 * s["test/top1"] for s in summaries]
        assert rows[arm["label"]][2] == f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f}"
        model = dcls_zoo.create_model(arm["arch"], num_classes=10, in_chans=1, **arm["model_kwargs"])
        assert rows[arm["label"]][5] == f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} M"
        assert all(s["test_images"] == 32 and s["macs_per_image"] > 0 for s in summaries)
    with open(out / "results.csv", newline="") as handle:
        assert sorted((r["arm"], r["seed"]) for r in csv.DictReader(handle)) == [
            ("dcls", "0"), ("dcls", "1"), ("k7", "0"), ("k7", "1")]
    with Image.open(out / "results.png") as image:
        image.verify()

    assert (interrupted / "summary.json").is_file()

    # an edited arm: its runs are trained again (new run folders), the others reused; results.md says which
    arms[1]["model_kwargs"] = {**_NARROW, "ls_init_value": 0.5}
    path = _write(path, {"fit_config": str(QUICKSTART), "fit_args": _SHORT, "seeds": [0, 1], "arms": arms})
    edited = _compare(path, out, "--arms", "dcls", "k7")
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert edited.stderr.count("k7 seed") >= 2 and "retrained: settings changed since version_0" in edited.stderr
    assert "model.model_kwargs.ls_init_value" in edited.stderr
    assert sorted(p.name for p in (out / "runs" / "k7" / "seed0").glob("version_*")) == ["version_0", "version_1"]
    provenance = (out / "results.md").read_text().split("## How each run was obtained")[1]
    assert provenance.count("reused: finished earlier with these settings") == 2
    assert provenance.count("retrained: settings changed since version_0 (model.model_kwargs.ls_init_value") == 2

    # nothing left to run: the results are still written, from the finished runs alone
    (out / "results.md").unlink()
    done = _compare(path, out, "--arms", "dcls", "k7")
    assert done.returncode == 0 and done.stderr.count("reused: finished earlier") == 4, done.stderr[-3000:]
    assert "Status: 4 of 4 runs finished." in (out / "results.md").read_text()


def test_which_runs_are_reused_resumed_or_retrained(tmp_path):
    """The plan of one arm x seed, from its run folders alone (no fit)."""
    from lightning_modules.commands.compare import _plan
    from lightning_modules.comparison import Arm
    from lightning_modules.runs import RunIdentity, RunSummary

    arm, seed = Arm("dcls", "DCLS", "convnext_dcls_atto"), 0
    identity = RunIdentity({"model": {"arch": "convnext_dcls_atto", "lr": 0.002}, "seed_everything": 0})
    root = tmp_path / "runs" / "dcls" / "seed0"
    assert _plan(tmp_path, arm, seed, identity).why == "trained"

    old = root / "version_0"
    RunIdentity({"model": {"arch": "convnext_dcls_atto", "lr": 0.004}, "seed_everything": 0}).write(old)
    RunSummary("convnext_dcls_atto", 1, 2, 1.0, test={"test/top1": 0.5}, best_validation={"best_val/top1": 0.5},
               params=1, macs_per_image=1).write(old)
    job = _plan(tmp_path, arm, seed, identity)
    assert job.action == "train" and job.why == "retrained: settings changed since version_0 (model.lr: 0.004 in version_0, 0.002 in now)"

    same = root / "version_1"
    identity.write(same)
    (same / "checkpoints").mkdir()
    import torch

    torch.save({"state_dict": {}}, same / "checkpoints" / "last.ckpt")
    job = _plan(tmp_path, arm, seed, identity)
    assert job.action == "resume" and job.resume_from == same / "checkpoints" / "last.ckpt"
    (same / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")  # nothing to resume from
    assert _plan(tmp_path, arm, seed, identity).action == "train"
    torch.save({"state_dict": {}}, same / "checkpoints" / "last.ckpt")

    RunSummary("convnext_dcls_atto", 1, 2, 1.0, test={"test/top1": 0.6}, params=1, macs_per_image=1).write(same)
    job = _plan(tmp_path, arm, seed, identity)
    assert job.action == "reuse" and job.result is None and job.outcome == "no validation"
    RunSummary("convnext_dcls_atto", 1, 2, 1.0, test={"test/top1": 0.6}, best_validation={"best_val/top1": 0.7},
               params=1, macs_per_image=1).write(same)
    job = _plan(tmp_path, arm, seed, identity)
    assert job.action == "reuse" and job.result.test_top1 == 0.6 and job.why.startswith("reused")
    # another seed of the same arm has another fingerprint: never the seed-0 run
    assert _plan(tmp_path, arm, 1, identity.with_seed(1)).action == "train"

    unrecorded = tmp_path / "runs" / "dcls" / "seed2" / "version_0"
    unrecorded.mkdir(parents=True)
    assert "records no settings" in _plan(tmp_path, arm, 2, identity.with_seed(2)).why


@pytest.mark.slow
def test_compare_arms_with_their_own_options_against_a_reference(tmp_path):
    """Learned (50x) and frozen positions and a dense arm, 3 seeds: each arm's options reach its fits,
    the table tests each arm against the frozen one with Welch's test, and the positions' movement is
    measured per run (none for the frozen arm)."""
    dcls = {**_NARROW, "dcls_kernel_size": [17, 15, 7, 3], "dcls_position_init": "uniform"}
    arms = [
        {"name": "fast", "label": "DCLS 50x", "arch": "convnext_dcls_atto", "model_kwargs": dcls,
         "fit_args": ["--model.position_lr_scale=50"]},
        {"name": "frozen", "label": "DCLS frozen", "arch": "convnext_dcls_atto", "model_kwargs": dcls,
         "fit_args": ["--model.freeze_positions=true"]},
        {"name": "k7", "label": "7x7", "arch": "convnext_k7_atto", "model_kwargs": _NARROW},
    ]
    path = _write(tmp_path / "arms.yaml", {"fit_config": str(QUICKSTART), "fit_args": _SHORT, "seeds": [0, 1, 2],
                                           "reference": "frozen", "arms": arms})
    out = tmp_path / "results"
    result = _compare(path, out, "--parallel", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    command = (out / "runs" / "fast" / "seed0" / "fit.log").read_text().splitlines()[0]
    assert command.endswith(" ".join(_SHORT) + " --model.position_lr_scale=50")  # the arm's option last

    summaries = {arm["name"]: [json.loads(next((out / "runs" / arm["name"] / f"seed{seed}").glob("version_*/summary.json"))
                                          .read_text()) for seed in (0, 1, 2)] for arm in arms}
    assert all(s["positions_frozen"] and set(s["position_shift_px"].values()) == {0.0} for s in summaries["frozen"])
    assert all(min(s["position_shift_px"].values()) > 0 for s in summaries["fast"])
    assert all("position_shift_px" not in s for s in summaries["k7"])
    tops = {name: [s["test/top1"] for s in runs] for name, runs in summaries.items()}

    results_md = (out / "results.md").read_text()
    assert _table_rows(results_md)["DCLS 50x"][8] == "`--model.position_lr_scale=50`"
    assert _table_rows(results_md)["7x7"][8] == "-"
    section = results_md.split("## Against the reference: DCLS frozen")[1].split("##")[0]
    for name, label in (("fast", "DCLS 50x"), ("k7", "7x7")):
        (row,) = [line for line in section.splitlines() if line.startswith(f"| {label} |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        expected = stats.ttest_ind(tops[name], tops["frozen"], equal_var=False)
        assert cells[1] == f"{100 * (statistics.mean(tops[name]) - statistics.mean(tops['frozen'])):+.2f}"
        assert cells[3] == (f"{expected.pvalue:.3g}" if len(set(tops[name] + tops["frozen"])) > 1 else "no spread in either arm")
    movement = results_md.split("## How far the positions moved")[1].split("##")[0]
    assert "| DCLS frozen | `--model.freeze_positions=true` | 0.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 |" in movement
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    fast = [row for row in rows if row["arm"] == "fast"]
    assert [float(row["shift_px:stages.0"]) for row in fast] == [s["position_shift_px"]["stages.0"] for s in summaries["fast"]]
    assert all(row["arm_fit_args"] == "--model.position_lr_scale=50" and row["reference"] == "frozen" for row in fast)
    with Image.open(out / "results.png") as image:
        image.verify()


def test_compare_refuses_bad_options_before_any_fit(tmp_path, capsys):
    path = _write(tmp_path / "c.yaml", _valid())
    # the real command once; the other refusals through the same entry point in this process
    result = _compare(path, tmp_path / "out", "--arms", "nope")
    assert result.returncode == 2 and "--arms: no arm nope" in result.stderr
    bad = _write(tmp_path / "bad.yaml", _valid(seeds="0"))
    negative = _write(tmp_path / "negative.yaml", _valid(seeds=[0, -1]))
    for config, extra, message in ((path, ["--parallel", "0"], "--parallel must be >= 1"),
                                   (path, ["--seeds", "0", "0"], "--seeds lists a seed twice (0 0)"),
                                   (bad, [], "seeds: must be a non-empty list of integers"),
                                   (negative, [], "seeds: must be a non-empty list of integers in [0, 2**32 - 1]")):
        assert main(["compare", "-c", str(config), "--out", str(tmp_path / "out"), *extra]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse refuses a negative seed before anything starts
        main(["compare", "-c", str(path), "--seeds", "-1"])
    assert info.value.code == 2 and "--seeds: -1 is outside [0, 2**32 - 1]" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
