"""``dcls-zoo compare``: the comparison file, the statistics and the table, and the real command run
on the embedded Fashion-MNIST (shortened fits), continued after an interruption and with a failing arm."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, short_fit
from PIL import Image

import dcls_zoo
from lightning_modules.commands.main import main
from lightning_modules.comparison import Arm, RunResult, load_comparison, markdown_table, plot_comparison, summarise

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _valid(**changes) -> dict:
    data = {"fit_config": str(QUICKSTART), "seeds": [0, 1],
            "arms": [{"name": "dcls", "arch": "convnext_dcls_atto"}, {"name": "k7", "arch": "convnext_k7_atto"}]}
    data.update(changes)
    return data


def test_the_shipped_comparisons_load_and_name_registered_models():
    for path in sorted((ROOT / "configs" / "compare").glob("*.yaml")):
        comparison = load_comparison(path)
        assert comparison.fit_config.is_file() and len(comparison.seeds) >= 2
        assert {arm.name for arm in comparison.arms} == {"dcls", "k7", "dil2", "dense"}
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


def _table_rows(results_md: str) -> dict[str, list[str]]:
    rows = {}
    for line in results_md.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[1].startswith("`"):
            rows[cells[0]] = cells
    return rows


# a shortened quickstart: 2 steps of real Fashion-MNIST images per fit, narrow networks
_SHORT = short_fit(epochs=1, train_batches=2, val_batches=1, test_batches=2, batch_size=16, warmup_epochs=0.5)
_NARROW = {"stem": "small", "stem_stride": 2, "dims": [8, 16, 24, 32]}


def _compare(path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_modules", "compare", "-c", str(path), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=path.parent)


@pytest.mark.slow
def test_compare_runs_every_arm_and_seed_reports_failures_and_continues(tmp_path):
    arms = [
        {"name": "dcls", "label": "DCLS", "arch": "convnext_dcls_atto",
         "model_kwargs": {**_NARROW, "dcls_kernel_size": [17, 15, 7, 3]}},
        {"name": "k7", "label": "7x7", "arch": "convnext_k7_atto", "model_kwargs": _NARROW},
        {"name": "broken", "arch": "no_such_model"},
    ]
    path = _write(tmp_path / "short.yaml", {"fit_config": str(QUICKSTART), "fit_args": _SHORT, "seeds": [0, 1],
                                            "arms": arms})
    out = tmp_path / "results"
    first = _compare(path, out, "--parallel", "2")
    assert first.returncode == 1, first.stderr[-3000:]  # the broken arm failed, the others ran
    assert "6 fits" in first.stderr and "2 at a time" in first.stderr
    assert "broken seed 0: FAILED (exit 2)" in first.stderr and "no_such_model" in first.stderr
    assert "2 run(s) failed: broken/seed0, broken/seed1" in first.stderr

    # the table against each run's own summary.json, and the parameters against the models themselves
    results_md = (out / "results.md").read_text()
    assert "Status: 4 of 6 runs finished; failed: broken/seed0, broken/seed1." in results_md
    assert "dcls-zoo compare -c" in results_md and "Machine: CPU" in results_md
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

    # an interrupted run (its summary gone, its last.ckpt kept) resumes; finished runs are read back
    interrupted = next((out / "runs" / "dcls" / "seed1").glob("version_*"))
    (interrupted / "summary.json").unlink()
    again = _compare(path, out, "--arms", "dcls", "k7")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished earlier") == 3
    assert re.search(r"dcls seed 1: test top-1 [0-9.]+% \(best val [0-9.]+%\) in resumed", again.stderr)
    log = (interrupted.parent / "fit.log").read_text()
    assert f"--ckpt_path={interrupted / 'checkpoints' / 'last.ckpt'}" in log
    assert [p.name for p in interrupted.parent.glob("version_*")] == [interrupted.name]  # the same run folder
    assert (interrupted / "summary.json").is_file()
    assert "Status: 4 of 4 runs finished." in (out / "results.md").read_text()

    # nothing left to run: the results are still written, from the finished runs alone
    (out / "results.md").unlink()
    done = _compare(path, out, "--arms", "dcls", "k7")
    assert done.returncode == 0 and done.stderr.count("finished earlier") == 4, done.stderr[-3000:]
    assert "Status: 4 of 4 runs finished." in (out / "results.md").read_text()


def test_compare_refuses_bad_options_before_any_fit(tmp_path, capsys):
    path = _write(tmp_path / "c.yaml", _valid())
    # the real command once; the other refusals through the same entry point in this process
    result = _compare(path, tmp_path / "out", "--arms", "nope")
    assert result.returncode == 2 and "--arms: no arm nope" in result.stderr
    bad = _write(tmp_path / "bad.yaml", _valid(seeds="0"))
    for config, extra, message in ((path, ["--parallel", "0"], "--parallel must be >= 1"),
                                   (bad, [], "seeds: must be a non-empty list of integers")):
        assert main(["compare", "-c", str(config), "--out", str(tmp_path / "out"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
