"""The round trip a user makes: train -> export -> reload through the model card's own recipe ->
the same top-1 as ``dcls-zoo test``, on the raw embedded Fashion-MNIST test images.

Both exports are checked: the one ``fit --export_after_fit`` writes and the standalone
``dcls-zoo export <best.ckpt>``. The card's Python block is executed as written.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import NO_PROGRESS_BAR, QUICKSTART, short_fit
from PIL import Image

from lightning_modules.data.fashion_mnist import load_embedded

SHORT_FIT = short_fit(epochs=1, train_batches=30, val_batches=None, batch_size=None, warmup_epochs=0.2)


def _command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_modules", *args],
        cwd=cwd, capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _card_recipe(export: Path) -> dict:
    """Run the card's Python block as a user pastes it; returns its namespace (model, transform, ...)."""
    card = (export / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    namespace: dict = {}
    exec(compile(block, str(export / "README.md"), "exec"), namespace)
    return namespace


def _card_top1(export: Path, images, labels) -> tuple[float, list]:
    recipe = _card_recipe(export)
    model, transform = recipe["model"], recipe["transform"]
    batch = torch.stack([transform(Image.fromarray(image)) for image in images])  # raw 28x28 uint8, mode "L"
    with torch.no_grad():
        predictions = torch.cat([model(part).argmax(-1) for part in batch.split(250)])
    top3 = recipe["predict"](Image.fromarray(images[0]))
    return (predictions == torch.from_numpy(labels)).float().mean().item(), top3


@pytest.mark.slow
def test_exports_reload_through_the_card_recipe_with_the_tested_accuracy(tmp_path):
    _command("fit", "-c", QUICKSTART, *SHORT_FIT, "--test_after_fit=true", "--export_after_fit=true", cwd=tmp_path)
    (run,) = (tmp_path / "logs" / "quickstart").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    best = summary["best_checkpoint"]

    # `dcls-zoo test` of the best checkpoint on the 1,000 held-out images
    _command("test", "-c", QUICKSTART, f"--ckpt_path={best}", NO_PROGRESS_BAR, cwd=tmp_path)
    newest = sorted((tmp_path / "logs" / "quickstart").iterdir())[-1]
    (row,) = [r for r in csv.DictReader(open(newest / "metrics.csv")) if r.get("test/top1")]
    tested = float(row["test/top1"])
    assert tested == pytest.approx(summary["test/top1"], abs=1e-4)
    assert tested > 0.5  # a trained model, so that agreement means something

    standalone = tmp_path / "standalone"
    _command("export", best, "--out", str(standalone), cwd=tmp_path)
    images, labels = load_embedded("test")
    for export in ((tmp_path / summary["export_dir"]), standalone):
        top1, top3 = _card_top1(export, images, labels)
        assert top1 == pytest.approx(tested, abs=1e-9), export  # every one of the 1,000 predictions agrees
        config = json.loads((export / "config.json").read_text())
        assert config["label_names"][0] == "T-shirt/top"
        assert top3[0][0] in config["label_names"] and 0 < top3[0][1] <= 1
        assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]
        assert "val/top1" in config["dcls_zoo"]["metrics"]
        card = (export / "README.md").read_text()
        assert "zero-pad (centred) to 32x32" in card and "val/top1" in card

    after_fit = json.loads(((tmp_path / summary["export_dir"]) / "config.json").read_text())
    alone = json.loads((standalone / "config.json").read_text())
    assert alone["pretrained_cfg"] == after_fit["pretrained_cfg"]
    from safetensors import safe_open

    with safe_open(tmp_path / summary["export_dir"] / "model.safetensors", "pt") as a, safe_open(standalone / "model.safetensors", "pt") as b:
        assert a.metadata() == b.metadata()
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # the same weights
