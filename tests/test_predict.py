"""``dcls-zoo predict``: named top-k predictions in a file, and no predictions from random weights."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from helpers import NO_AFTER_FIT, NO_PROGRESS_BAR, QUICKSTART, TINY_FIT

from lightning_modules import FashionMNISTDataModule
from lightning_modules.checkpoints import load_checkpoint, model_from_checkpoint
from lightning_modules.commands.main import main


@pytest.mark.slow
def test_predict_writes_named_top_k_from_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "-c", QUICKSTART, *TINY_FIT, *NO_AFTER_FIT]) == 0
    (run,) = (tmp_path / "logs" / "quickstart").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "predict", "-c", QUICKSTART, f"--ckpt_path={last}",
         "--trainer.limit_predict_batches=2", NO_PROGRESS_BAR, "--data.batch_size=32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (written,) = [entry for entry in result.stdout.splitlines() if entry.startswith("dcls-zoo predict: wrote")]
    path = tmp_path / written.rsplit(" to ", 1)[1]
    assert path == run / "predict" / "last" / "predictions.csv"  # inside the checkpoint's run
    assert list((tmp_path / "logs" / "quickstart").iterdir()) == [run]
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 64 and list(rows[0]) == ["index", "label", "prediction", "top1", "top2", "top3", "top4", "top5"]
    data = FashionMNISTDataModule(batch_size=32)
    data.setup()
    names = data.class_names
    images = torch.stack([data.test_set[i][0] for i in range(64)])
    labels = [names[int(data.test_set[i][1])] for i in range(64)]
    model, _ = model_from_checkpoint(load_checkpoint(last))  # the weights the checkpoint evaluates with
    with torch.no_grad():
        probabilities = model(images).softmax(-1)
    for row, p, label in zip(rows, probabilities, labels):
        assert row["label"] == label and row["prediction"] == names[int(p.argmax())]
        name, value = row["top1"].rsplit(":", 1)
        assert name == row["prediction"] and float(value) == pytest.approx(float(p.max()), abs=1e-4)
        assert sum(float(row[f"top{i}"].rsplit(":", 1)[1]) for i in range(1, 6)) <= 1.0001


def test_predict_without_weights_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["predict", "-c", QUICKSTART, "--trainer.limit_predict_batches=1"])
    assert info.value.code == 2
    assert "predict needs weights: pass --ckpt_path" in capsys.readouterr().err
