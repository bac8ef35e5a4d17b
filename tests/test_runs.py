"""The runs room: summary.json as one typed record, and which checkpoint a run means."""

from __future__ import annotations

import json

import pytest

from lightning_modules.runs import RunSummary, named_checkpoint, runs_newest_first, version_of


def test_summary_round_trips_through_its_flat_json(tmp_path):
    summary = RunSummary(arch="convnext_dcls_atto", epochs=3, global_steps=30, fit_seconds=12.5, log_dir=str(tmp_path),
                         checkpoint=str(tmp_path / "checkpoints" / "best.ckpt"), checkpoint_kind="best",
                         best_validation={"best_val/top1": 0.9}, test={"test/top1": 0.85, "test/loss": 0.4},
                         test_images=1000, params=3_374_330, macs_per_image=50_900_000, fingerprint="ab" * 32,
                         extra={"position_travel": {"stages.0": 0.5}})
    path = summary.write(tmp_path)
    flat = json.loads(path.read_text())
    # the file keeps the flat layout readers know: metric names as keys, the checkpoint named by its kind
    assert flat["test/top1"] == 0.85 and flat["best_val/top1"] == 0.9 and flat["best_checkpoint"].endswith("best.ckpt")
    assert "checkpoint" not in flat and "last_checkpoint" not in flat and "resumed_from" not in flat
    back = RunSummary.read(tmp_path)
    assert back == summary
    assert back.test_top1 == 0.85 and back.best_val_top1 == 0.9


def test_a_run_without_summary_or_with_garbage_reads_as_none(tmp_path):
    assert RunSummary.read(tmp_path) is None
    (tmp_path / "summary.json").write_text("{not json")
    assert RunSummary.read(tmp_path) is None


def test_runs_are_ordered_by_version_number_not_by_name(tmp_path):
    for n in (2, 10, 1):
        (tmp_path / f"version_{n}").mkdir()
    (tmp_path / "version_x").mkdir()
    assert [version_of(run) for run in runs_newest_first(tmp_path)] == [10, 2, 1]


@pytest.mark.parametrize("name", ["last", "best"])
def test_a_run_without_last_ckpt_names_no_checkpoint(tmp_path, name):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best-epoch000-val_top1=0.5000.ckpt").write_bytes(b"x")
    assert named_checkpoint(tmp_path, name) is None
