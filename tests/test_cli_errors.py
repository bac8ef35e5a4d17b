"""Common mistakes at the command line: one line naming the argument and the fix, exit 2, at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICK_FIT, QUICKSTART

from lightning_modules.commands.main import main
from lightning_modules.runs import run_folder_of


@pytest.fixture
def garbage_checkpoint(tmp_path) -> Path:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 40)
    return path


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--model.optimizer.init_args.lr=-1"], "model.optimizer: Invalid learning rate: -1.0"),
        (["--trainer.max_epochs=-5"], "trainer: `max_epochs` must be a non-negative integer"),
        (["--ckpt_path=missing/last.ckpt"], "--ckpt_path: checkpoint 'missing/last.ckpt' does not exist"),
        (["--ckpt_path=last"], "--ckpt_path last: no run under logs/quickstart/version_* has a last checkpoint"),
        (["--model.mixup_alpha=0.8", "--data.init_args.batch_size=63"], "needs an even batch size; pass an even --data.init_args.batch_size"),
        (["--model.pretrained=in1k"], "No pretrained weights exist for convnext_dcls_atto.in1k; weights exist for"),
        (["--data.init_args.data_dir=/nowhere"], "data_dir='/nowhere': Fashion-MNIST test files not found"),
    ],
)
def test_a_mistake_is_one_line_that_leads_with_it(arguments, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", QUICKSTART, *arguments, *QUICK_FIT])
    assert info.value.code == 2
    error = capsys.readouterr().err
    first = next(line for line in error.splitlines() if line.startswith("dcls-zoo fit: error:"))
    assert expected in first, error
    assert "Traceback" not in error and "Union subtypes" not in error and "usage:" not in error
    assert not (tmp_path / "logs").exists()  # a failed start opens no run folder (no version_N)


def test_a_garbage_ckpt_path_is_named_by_the_command(garbage_checkpoint, tmp_path):
    for command in ("fit", "test"):
        result = subprocess.run(
            [sys.executable, "-m", "lightning_modules", command, "-c", QUICKSTART, f"--ckpt_path={garbage_checkpoint}", *QUICK_FIT],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"dcls-zoo {command}: error: --ckpt_path: cannot read checkpoint '{garbage_checkpoint}'" in result.stderr
        assert "truncated or corrupted" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["test", "validate"])
def test_evaluating_random_weights_is_refused(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main([command, "-c", QUICKSTART, "--trainer.limit_test_batches=1", "--trainer.limit_val_batches=1"])
    assert info.value.code == 2
    assert f"dcls-zoo {command}: error: {command} needs weights: pass --ckpt_path" in capsys.readouterr().err


def test_a_trainer_that_refuses_its_callbacks_is_one_line(tmp_path):
    """No logger, but the config's LearningRateMonitor needs one: Lightning raises once the
    Trainer runs; the command says so in one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "fit", "-c", QUICKSTART, "--trainer.logger=false", *QUICK_FIT],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "dcls-zoo fit: error: Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_checkpoint_named_from_inside_its_run_folder_is_found(tmp_path, monkeypatch):
    checkpoints = tmp_path / "logs" / "quickstart" / "version_3" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.chdir(checkpoints)
    assert run_folder_of("last.ckpt") == checkpoints.parent
    assert run_folder_of("last") is None and run_folder_of(tmp_path / "elsewhere.ckpt") is None
