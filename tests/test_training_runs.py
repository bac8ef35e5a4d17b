"""Whole training runs through the ``dcls-zoo`` command: exact resume, DDP on two CPU processes, export."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import NO_AFTER_FIT, QUICKSTART, short_fit

import dcls_zoo
from lightning_modules import FashionMNISTDataModule, ImageClassifier
from lightning_modules.commands.main import main

# the quickstart recipe (EMA, clamp, repulsive loss from epoch 1, position plots), made small
SMALL_RUN = short_fit(epochs=2, train_batches=3, val_batches=2, warmup_epochs=0.5, repulsive_loss_after_epoch=0)


# what the resume tests run: labels recorded per step, every step logged, no after-fit job
RESUMABLE_RUN = ["fit", "-c", QUICKSTART, *SMALL_RUN, "--trainer.log_every_n_steps=1",
                 "--trainer.callbacks+=run_helpers.RecordLabels", *NO_AFTER_FIT]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """One uninterrupted RESUMABLE_RUN, the reference of the resume tests (its working directory)."""
    directory = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        assert main(RESUMABLE_RUN) == 0
    return directory


def _run_dir(cwd: Path) -> Path:
    (run,) = (cwd / "logs" / "quickstart").iterdir()
    return run


def _epoch_rows(run: Path) -> list[tuple[str, ...]]:
    """The validation rows of a run's metrics.csv: (epoch, step, val/top1, val/loss)."""
    rows = csv.DictReader(open(run / "metrics.csv"))
    return [(r["epoch"], r["step"], r["val/top1"], r["val/loss"]) for r in rows if r.get("val/top1")]


def _tensors(value, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint structure, by path."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for key, item in items:
        out.update(_tensors(item, f"{prefix}/{key}"))
    return out


@pytest.mark.slow
def test_resuming_from_last_checkpoint_continues_exactly(straight_run, tmp_path, monkeypatch):
    straight, interrupted = straight_run, tmp_path / "interrupted"
    interrupted.mkdir()
    common = RESUMABLE_RUN

    monkeypatch.chdir(interrupted)
    assert main([*common, "--trainer.callbacks+=run_helpers.StopAfterEpoch"]) == 0
    stopped = torch.load(_run_dir(interrupted) / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["epoch"] == 0
    assert main([*common, "--ckpt_path=last"]) == 0  # the newest run's last.ckpt

    # the resumed run continued in its own folder: one run, its metrics and pictures complete
    run = _run_dir(interrupted)
    assert [p.name for p in (interrupted / "logs" / "tensorboard" / "quickstart").iterdir()] == ["version_0"]
    assert _epoch_rows(run) == _epoch_rows(_run_dir(straight))
    assert not (run / "metrics.before-resume.csv").exists()  # the safety copy goes once the rows are back
    want_summary = json.loads((_run_dir(straight) / "summary.json").read_text())
    got_summary = json.loads((run / "summary.json").read_text())
    assert got_summary["best_val/top1"] == want_summary["best_val/top1"]
    assert Path(got_summary["resumed_from"]).resolve() == run / "checkpoints" / "last.ckpt"
    expected = torch.load(_run_dir(straight) / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    monitor_state = resumed["callbacks"]["PositionMonitor"]
    assert [epochs for epochs, _, _ in next(iter(monitor_state["histograms"].values()))] == [0, 1, 2]
    for group, records in expected["callbacks"]["PositionMonitor"]["histograms"].items():
        for (epochs, counts, _), (got_epochs, got_counts, _) in zip(records, monitor_state["histograms"][group]):
            assert epochs == got_epochs and all(torch.equal(a, b) for a, b in zip(counts, got_counts)), (group, epochs)
    assert (resumed["epoch"], resumed["global_step"]) == (expected["epoch"], expected["global_step"]) == (1, 6)
    want, got = _tensors(expected), _tensors(resumed)
    # model (EMA and raw), optimizer moments, scheduler, EMA counter
    assert {k for k in want if k.startswith(("/state_dict", "/current_model_state", "/optimizer_states"))} <= set(got)
    for key, value in want.items():
        if key.startswith(("/state_dict", "/current_model_state", "/optimizer_states", "/lr_schedulers", "/averaging_state")):
            assert torch.equal(got[key], value), key
    assert resumed["lr_schedulers"][0]["last_epoch"] == expected["lr_schedulers"][0]["last_epoch"] == 6


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_is_exported_and_resumes_exactly_in_its_folder(straight_run, tmp_path, monkeypatch, recwarn):
    """--trainer.max_steps=2 ends epoch 0 after 2 of its 3 batches: the job exports last.ckpt (no
    validation ran, so there is no best one). A run interrupted after step 2 resumes from the
    checkpoint written then and continues epoch 0 with the samples it had not seen: the same
    labels, step by step, and the same learning rates as an uninterrupted run, in the same run
    folder, with no "not resumable" warning."""
    straight, capped, short = straight_run, tmp_path / "capped", tmp_path / "short"
    capped.mkdir(), short.mkdir()
    common = RESUMABLE_RUN
    monkeypatch.chdir(capped)
    assert main([*common, "--trainer.max_steps=2", "--export_after_fit=true"]) == 0
    summary = json.loads((_run_dir(capped) / "summary.json").read_text())
    assert summary["global_steps"] == 2 and Path(summary["last_checkpoint"]).name == "last.ckpt"
    model = dcls_zoo.create_model(f"local-dir:{summary['export_dir']}", pretrained=True)
    last = torch.load(summary["last_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(value, last[f"model.{key}"]) for key, value in model.state_dict().items())
    # Lightning counts that epoch as ended: resuming starts epoch 1 and keeps epoch 0's rows, its
    # epoch-end training row (logged after the checkpoint) included
    epoch_rows = lambda: [r for r in csv.DictReader(open(_run_dir(capped) / "metrics.csv")) if r.get("train/loss_epoch")]  # noqa: E731
    before = epoch_rows()
    assert main([*common, "--ckpt_path=last"]) == 0
    after = epoch_rows()
    assert [r["epoch"] for r in after] == ["0", "1"]
    assert {k: v for k, v in after[0].items() if v} == {k: v for k, v in before[0].items() if v}

    monkeypatch.chdir(short)  # interrupted after step 2, with a checkpoint written after every 2 steps
    every_two_steps = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                       "--trainer.callbacks.init_args.every_n_train_steps=2",
                       "--trainer.callbacks.init_args.filename=mid-{step}"]
    assert main([*common, *every_two_steps, "--trainer.callbacks+=run_helpers.StopAfterStep"]) == 0
    run = _run_dir(short)
    recwarn.clear()
    mid_epoch = run / "checkpoints" / "mid-step=2.ckpt"
    assert main([*common, f"--ckpt_path={mid_epoch}"]) == 0
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
    assert [p.name for p in (short / "logs" / "quickstart").iterdir()] == ["version_0"]

    def steps(directory: Path) -> list[tuple[int, list[int]]]:
        return [(r["step"], r["labels"]) for r in map(json.loads, open(directory / "labels.jsonl"))]

    assert steps(short) == steps(straight) and len(steps(straight)) == 6

    def learning_rates(directory: Path) -> dict[str, str]:
        rows = csv.DictReader(open(_run_dir(directory) / "metrics.csv"))
        return {r["step"]: r["lr-AdamW/decay"] for r in rows if r.get("lr-AdamW/decay")}

    assert learning_rates(short) == learning_rates(straight) and len(learning_rates(straight)) >= 6
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 6)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_reports_metrics_over_all_ranks(tmp_path):
    command = [
        sys.executable, "-m", "lightning_modules", "fit", "-c", QUICKSTART,
        "--trainer.devices=2", "--trainer.strategy=ddp", *short_fit(train_batches=3, val_batches=None, batch_size=64),
        *NO_AFTER_FIT,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
    run = _run_dir(tmp_path)
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/top1")]
    logged = float(rows[-1]["val/top1"])

    # the checkpoint holds the EMA weights the validation used: evaluate them in one process on all 500 images
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # the quickstart's network, rebuilt from the run's own hyper-parameters
    module = ImageClassifier("convnext_dcls_atto", num_classes=10, in_chans=1,
                             model_kwargs=checkpoint["hyper_parameters"]["model_kwargs"])
    module.load_state_dict(checkpoint["state_dict"])
    data = FashionMNISTDataModule(batch_size=100)
    data.setup()
    correct = 0
    with torch.no_grad():
        for images, labels in data.val_dataloader():
            correct += (module.eval()(images).argmax(1) == labels).sum().item()
    assert len(data.val_set) == 500
    assert logged == pytest.approx(correct / 500, abs=1e-6)
    assert (run / "positions" / "positions_speed.png").is_file()  # rank zero drew the pictures


@pytest.mark.slow
def test_quickstart_job_tests_exports_and_summarises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", QUICKSTART, *SMALL_RUN, "--trainer.limit_test_batches=2"]) == 0
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["global_steps"] == 6
    assert Path(summary["best_checkpoint"]).name.startswith("best-epoch")
    assert 0.0 <= summary["test/top1"] <= 1.0 and "best_val/top1" in summary
    export = Path(summary["export_dir"])
    for name in ("config.json", "model.safetensors", "README.md", "positions.png"):
        assert (export / name).is_file(), name
    # the export is the best checkpoint's EMA weights, loadable without Lightning
    model = dcls_zoo.create_model(f"local-dir:{export}", pretrained=True).eval()
    best = torch.load(summary["best_checkpoint"], weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[f"model.{key}"]), key
    config = json.loads((export / "config.json").read_text())
    assert config["label_names"][0] == "T-shirt/top" and config["pretrained_cfg"]["input_size"] == [1, 32, 32]
    card = (export / "README.md").read_text()
    assert "zalando-datasets/fashion_mnist" in card and "test/top1" in card
    # the card says how the weights were made and how far the numbers go
    assert summary["test_images"] == 64 and summary["params"] == sum(p.numel() for p in model.parameters())
    assert "| data | Fashion-MNIST, the stratified subset embedded in dcls-zoo" in card
    assert "5,500 train / 500 validation" in card and "1,000 test images" in card
    assert "| epochs | 2 (6 optimizer steps, batch 32) |" in card and "| seed | 0 |" in card
    assert "AdamW, peak learning rate 0.002, weight decay 0.05; DCLS positions at 5x the rate" in card
    assert "repulsive position loss (weight 1) after 1 epoch(s)" in card and "EMA of the weights" in card
    error = 100 * (summary["test/top1"] * (1 - summary["test/top1"]) / 64) ** 0.5
    assert f"## Limitations\n\n- The test top-1 comes from 64 images: its binomial standard error is about {error:.1f} points" in card
    for name in ("metrics.csv", "config.yaml", "positions/positions_hist.png", "positions/positions_speed.png"):
        assert (run / name).is_file(), name
    assert list((tmp_path / "logs" / "tensorboard" / "quickstart").rglob("events.out.tfevents.*"))

    # the same config evaluates the best checkpoint with `dcls-zoo test` (EMA weights, as after fit)
    # ... and writes its results into the checkpoint's run folder, not a new version_N
    evaluate = ["test", "-c", QUICKSTART, "--data.batch_size=32", "--trainer.limit_test_batches=2"]
    assert main([*evaluate, f"--ckpt_path={summary['best_checkpoint']}"]) == 0
    assert [p.name for p in (tmp_path / "logs" / "quickstart").iterdir()] == [run.name]
    results = run / "test" / Path(summary["best_checkpoint"]).stem
    (row,) = [r for r in csv.DictReader(open(results / "metrics.csv")) if r.get("test/top1")]
    assert round(float(row["test/top1"]), 4) == summary["test/top1"]


@pytest.mark.slow
def test_quickstart_trains_and_tests_in_bf16_mixed(tmp_path):
    """The GPU presets' precision, here as CPU autocast, through the real command.

    Batches of 8: without native bf16 (AVX2 has none) PyTorch runs a depthwise convolution in bf16
    one channel group at a time, ~20x slower than in fp32."""
    command = [
        sys.executable, "-m", "lightning_modules", "fit", "-c", QUICKSTART, *SMALL_RUN, "--data.batch_size=8",
        "--trainer.precision=bf16-mixed", "--trainer.limit_test_batches=2", "--export_after_fit=false",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["global_steps"] == 6 and 0.0 <= summary["test/top1"] <= 1.0
    state = torch.load(tmp_path / summary["best_checkpoint"], weights_only=True)["state_dict"]
    positions = {k: v for k, v in state.items() if k.endswith(".P")}
    assert positions and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in positions.values())
