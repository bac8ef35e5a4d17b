"""Common mistakes at the command line: one line naming the argument and the fix, exit 2, at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
        (["--ckpt_path=last"], "--ckpt_path last: no run of this config under logs/quickstart"),
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


def test_every_command_line_mistake_is_one_line_with_a_did_you_mean(tmp_path):
    """The real ``dcls-zoo`` as subprocesses (started together): exit 2, one line, the fix named, no usage dump."""
    (tmp_path / "bad.yaml").write_text("model:\n  lr: 0.1\n")
    cases = [
        (["fit", "-c", QUICKSTART, "--model.lr", "0.1"], "unknown option --model.lr", None),
        (["fit", "-c", QUICKSTART, "-c", str(tmp_path / "bad.yaml")], "unknown option --model.lr", None),
        (["fit", "-c", QUICKSTART, "--data", "FashionMnistDataModule"], "--data FashionMnistDataModule: no such class",
         "did you mean FashionMNISTDataModule?"),
        (["fit", "-c", QUICKSTART.replace(".yaml", ".yml")], "config file", "did you mean " + QUICKSTART),
        (["fit", "-c", QUICKSTART, "--trainer.max_epoch", "1"], "unknown option --trainer.max_epoch",
         "did you mean --trainer.max_epochs"),  # an abbreviation is refused, never taken as max_epochs
        (["compare", "-c", "x.yaml", "--parall", "2"], "unknown option --parall", "did you mean --parallel?"),
    ]
    processes = [subprocess.Popen([sys.executable, "-m", "lightning_modules", *arguments], cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for arguments, _, _ in cases]
    for process, (arguments, mistake, fix) in zip(processes, cases):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 2, (arguments, err[-2000:])
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"dcls-zoo {arguments[0]}: error: "), (arguments, err)
        assert mistake in lines[0] and (fix or "did you mean") in lines[0], (arguments, lines[0])
        assert "usage:" not in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()  # nothing started


def test_library_messages_name_arguments_and_the_commands_name_flags(tmp_path, capsys):
    """The library speaks Python (``ema=True``), ``dcls-zoo export`` speaks its flags (``--ema``)."""
    from dcls_zoo.state_dicts import select_weights
    from lightning_modules.commands.arguments import as_flags

    raw_only = {"state_dict": {"model.w": torch.zeros(1)}}
    with pytest.raises(ValueError, match=r"ema=True: the checkpoint has no EMA weights .*with ema=False") as info:
        select_weights(raw_only, ema=True)
    assert "--" not in str(info.value)
    assert as_flags(str(info.value)).startswith("--ema: the checkpoint has no EMA weights") and "--no-ema" in as_flags(str(info.value))
    checkpoint = tmp_path / "raw.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "hyper_parameters": {"arch": "convnext_dcls_atto"}}, checkpoint)
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "out"), "--ema"]) == 1
    err = capsys.readouterr().err
    assert "dcls-zoo export: error: --ema: the checkpoint has no EMA weights" in err and "--no-ema" in err
