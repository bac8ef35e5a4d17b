"""Every run knows what made it: its settings and fingerprint, checked whenever a run is resumed or
named by ``--ckpt_path last|best``; nothing rewrites a run it did not train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import QUICKSTART

from lightning_modules.commands.main import main
from lightning_modules.runs import IDENTITY_KEY, RunIdentity, RunSummary, run_settings, setting_differences

# one epoch of two steps of the quickstart recipe: real checkpoints in seconds
TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--data.batch_size=16",
        "--model.warmup_epochs=0", "--export_after_fit=false"]


def _fit(cwd: Path, *extra: str, config: str = QUICKSTART) -> None:
    assert main(["fit", "-c", config, *TINY, *extra]) == 0


def _runs(cwd: Path, name: str = "quickstart") -> list[Path]:
    return sorted((cwd / "logs" / name).glob("version_*"))


def _refused(cwd: Path, *arguments: str) -> str:
    """Run the real ``dcls-zoo`` with ``arguments`` in ``cwd``: it must stop with exit 2 and one error line."""
    result = subprocess.run([sys.executable, "-m", "lightning_modules", *arguments], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------- the record


def test_settings_keep_what_decides_a_run_and_drop_what_only_logs():
    config = {
        "seed_everything": 3, "ckpt_path": "x.ckpt", "test_after_fit": True, "config": ["a.yaml"],
        "model": {"arch": "convnext_dcls_atto", "optimizer": {"init_args": {"lr": 0.002}}},
        "data": {"class_path": "D", "init_args": {"batch_size": 64}},
        "trainer": {"max_epochs": 10, "log_every_n_steps": 10, "enable_progress_bar": False,
                    "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}],
                    "callbacks": [
                        {"class_path": "lightning_modules.method.ClampPositions", "init_args": {}},
                        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {}},
                        {"class_path": "lightning_modules.position_monitor.PositionMonitor", "init_args": {}},
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val/top1"}},
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": None}},
                    ]},
    }
    settings = run_settings(config)
    assert settings["seed_everything"] == 3 and settings["model"]["optimizer"]["init_args"]["lr"] == 0.002
    assert set(settings["callbacks"]) == {"ClampPositions", "ModelCheckpoint"}  # watchers and plain savers left out
    assert "ckpt_path" not in settings and "config" not in settings and "test_after_fit" not in settings
    assert settings["trainer"] == {"max_epochs": 10}
    # what only logs does not change the fingerprint; what decides the numbers does
    logged = json.loads(json.dumps(config))
    logged["trainer"]["log_every_n_steps"] = 1
    logged["trainer"]["logger"][0]["init_args"]["save_dir"] = "elsewhere"
    assert RunIdentity.of_config(logged).fingerprint == RunIdentity.of_config(config).fingerprint
    retuned = json.loads(json.dumps(config))
    retuned["model"]["optimizer"]["init_args"]["lr"] = 0.001
    assert RunIdentity.of_config(retuned).fingerprint != RunIdentity.of_config(config).fingerprint
    assert setting_differences(settings, run_settings(retuned)) == [("model.optimizer.init_args.lr", 0.002, 0.001)]
    assert RunIdentity.of_config(config).with_seed(4).settings["seed_everything"] == 4


def test_a_fit_records_its_identity_in_its_folder_checkpoints_and_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path)
    (run,) = _runs(tmp_path)
    identity = RunIdentity.read(run)
    assert identity is not None and identity.settings["model"]["arch"] == "convnext_dcls_atto"
    assert identity.settings["trainer"]["max_epochs"] == 1 and identity.settings["seed_everything"] == 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert RunIdentity.of_checkpoint(checkpoint) == identity and checkpoint[IDENTITY_KEY]["fingerprint"] == identity.fingerprint
    assert RunSummary.read(run).fingerprint == identity.fingerprint


# ------------------------------------------------------------------------------- resuming


@pytest.mark.slow
def test_a_resume_with_other_settings_is_refused_naming_each_field(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, "--trainer.max_epochs=2", "--trainer.callbacks+=run_helpers.StopAfterEpoch")
    (run,) = _runs(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    line = _refused(tmp_path, "fit", "-c", QUICKSTART, *TINY, "--trainer.max_epochs=2", f"--ckpt_path={last}",
                    "--model.optimizer.init_args.lr=0.001", "--model.model_kwargs.dcls_kernel_size=[9,5,3,3]")
    assert "model.optimizer.init_args.lr: 0.002 in the run, 0.001 in this command" in line
    assert "model.model_kwargs.dcls_kernel_size: [17, 15, 7, 3] in the run, [9, 5, 3, 3] in this command" in line
    assert f"--model.pretrained {last}" in line
    assert len(_runs(tmp_path)) == 1  # nothing started
    # the same settings resume; a longer schedule is said, not refused
    assert main(["fit", "-c", QUICKSTART, *TINY, "--trainer.max_epochs=3", f"--ckpt_path={last}"]) == 0
    assert "resuming with trainer.max_epochs: 2 in the run, 3 in this command" in capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_run_is_never_resumed_nor_rewritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path)
    (run,) = _runs(tmp_path)
    before = {path.name: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}
    line = _refused(tmp_path, "fit", "-c", QUICKSTART, *TINY, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert "already finished its 1 epochs" in line and "--model.pretrained" in line
    assert {path.name: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()} == before


# ------------------------------------------------------------------------------- --ckpt_path last|best


@pytest.fixture
def two_configs(tmp_path, monkeypatch) -> tuple[Path, str]:
    """The quickstart run, then a newer run of another config (the 7x7 baseline) logging into the same folder."""
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path)
    other = yaml.safe_load(Path(QUICKSTART).read_text())
    other["model"]["arch"] = "convnext_k7_atto"
    other["model"]["model_kwargs"] = {"stem": "small", "stem_stride": 2, "conv_mlp": False, "ls_init_value": 0.1}
    path = tmp_path / "k7.yaml"
    path.write_text(yaml.safe_dump(other))
    _fit(tmp_path, config=str(path))
    return tmp_path, str(path)


@pytest.mark.slow
def test_last_and_best_mean_this_configs_newest_run(two_configs, capsys):
    cwd, other = two_configs
    ours, theirs = _runs(cwd)
    for name in ("last", "best"):
        assert main(["test", "-c", QUICKSTART, *TINY, f"--ckpt_path={name}"]) == 0
        chosen = capsys.readouterr().err
        assert f"--ckpt_path {name} is {ours.relative_to(cwd) / 'checkpoints'}/" in chosen, chosen
        assert main(["test", "-c", other, *TINY, f"--ckpt_path={name}"]) == 0
        assert f"--ckpt_path {name} is {theirs.relative_to(cwd) / 'checkpoints'}/" in capsys.readouterr().err


@pytest.mark.slow
def test_no_silent_fall_back_to_an_older_run(two_configs, capsys, monkeypatch):
    cwd, _ = two_configs
    ours, _ = _runs(cwd)
    summary = (ours / "summary.json").read_text()
    # a newer run of this config, interrupted before any checkpoint: last/best name it, and refuse
    newest = ours.parent / "version_9"
    newest.mkdir()
    RunIdentity.read(ours).write(newest)
    for name in ("last", "best"):
        line = _refused(cwd, "test", "-c", QUICKSTART, *TINY, f"--ckpt_path={name}")
        assert f"this config's newest run {newest.relative_to(cwd)} has no {name} checkpoint" in line
        assert str(ours.relative_to(cwd)) in line  # the older run is named, not taken
        line = _refused(cwd, "fit", "-c", QUICKSTART, *TINY, f"--ckpt_path={name}")
        assert f"this config's newest run {newest.relative_to(cwd)} has no {name} checkpoint" in line
    assert (ours / "summary.json").read_text() == summary  # the older, finished run is untouched


@pytest.mark.slow
def test_a_garbage_last_ckpt_is_one_line_for_last_and_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path)
    (run,) = _runs(tmp_path)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint" * 100)
    for name in ("last", "best"):
        result = subprocess.run([sys.executable, "-m", "lightning_modules", "test", "-c", QUICKSTART, *TINY,
                                 f"--ckpt_path={name}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "cannot read checkpoint" in errors[0] and "Traceback" not in result.stderr
