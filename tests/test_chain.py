"""The chain a model travels, as a user runs it with real ``dcls-zoo`` commands against the loopback
Hub: fit -> export -> push; load back through ``hf-hub:`` and ``torch.hub.load(source="local")``;
fine-tune on RGB class folders naming no architecture; test, export, push again. At every step the
card's own recipe reproduces ``dcls-zoo test``, and the fine-tune's averaged weights never hide what
training learned."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import NO_PROGRESS_BAR, QUICKSTART, ROOT, class_folders
from PIL import Image

FINETUNE = str(ROOT / "configs" / "finetune.yaml")
# the quickstart recipe, short: 1 epoch of 40 steps
QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=40", "--trainer.limit_val_batches=4",
         "--trainer.limit_test_batches=4", "--model.warmup_epochs=0.2", NO_PROGRESS_BAR]
CLASSES = (0, 1, 3, 7)  # T-shirt/top, Trouser, Dress, Sneaker: 150 + 25 + 100 images each


def _dcls_zoo(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "lightning_modules", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=1200, env=env)
    assert result.returncode == 0, f"dcls-zoo {' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _tested_top1(run_dir: Path) -> float:
    (row,) = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("test/top1")]
    return float(row["test/top1"])


_RECIPE = r"""
import json, re, sys
import numpy as np, torch
from PIL import Image
source, images = sys.argv[1], sys.argv[2]
card = open(sys.argv[3]).read()
(block,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
block = block.replace(re.search(r"create_model\((.*?), pretrained=True\)", block).group(1), repr(source))
namespace = {}
exec(block, namespace)  # the card's own code, as a user pastes it (pointed at the source under test)
model, transform = namespace["model"], namespace["transform"]
data = np.load(images)
batch = torch.stack([transform(Image.fromarray(image)) for image in data["images"]])
with torch.no_grad():
    predictions = model(batch).argmax(-1)
print(json.dumps({"top1": (predictions == torch.from_numpy(data["labels"])).float().mean().item()}))
"""


def _card_top1(source: str, card: Path, images: Path, cwd: Path, env: dict) -> float:
    result = subprocess.run([sys.executable, "-c", _RECIPE, source, str(images), str(card)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["top1"]


def _images(path: Path, images, labels) -> Path:
    import numpy as np

    np.savez(path, images=np.asarray(images), labels=np.asarray(labels))
    return path


@pytest.mark.slow
def test_fit_export_push_load_finetune_push(tmp_path, fake_hub):
    env = {**fake_hub.env, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    # 1. a quickstart-sized fit: tested and exported after fitting, then pushed
    _dcls_zoo("fit", "-c", QUICKSTART, *QUICK, "--test_after_fit=true", "--export_after_fit=true", cwd=tmp_path, env=env)
    (run,) = (tmp_path / "logs" / "quickstart").glob("version_*")
    summary = json.loads((run / "summary.json").read_text())
    export = tmp_path / summary["export_dir"]  # relative to the run's working directory
    _dcls_zoo("push", str(export), "--repo-id", "tester/quick", cwd=tmp_path, env=env)

    # `dcls-zoo test` scores the first 4 batches of held-out images; the card's recipe gets the same images raw
    from lightning_modules.data.fashion_mnist import load_embedded

    images, labels = load_embedded("test")
    count = summary["test_images"]
    scored = _images(tmp_path / "quick_test.npz", images[:count], labels[:count])
    tested = summary["test/top1"]
    assert tested > 0.5  # a trained model, so that agreement means something
    for source in (f"local-dir:{export}", "hf-hub:tester/quick"):
        assert _card_top1(source, export / "README.md", scored, tmp_path, env) == pytest.approx(tested, abs=1e-4), source  # summary.json rounds to 4 places

    # 2. back through torch.hub on the checkout, from the Hub, sha256-checked
    hub_load = ("import sys, torch; m = torch.hub.load(sys.argv[1], 'create_model', 'hf-hub:tester/quick', "
                "pretrained=True, source='local'); print(type(m).__name__, m.num_classes)")
    result = subprocess.run([sys.executable, "-c", hub_load, str(ROOT)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.split() == ["ConvNeXtDcls", "10"], result.stderr[-3000:]

    # 3. fine-tune on RGB class folders from the Hub weights, naming no architecture: 600 images, 2 x 37 steps
    folders = class_folders(tmp_path / "folders", CLASSES, {"train": 150, "val": 25, "test": 100})
    finetune = ["--model.pretrained=hf-hub:tester/quick", f"--data.init_args.root={folders}",
                "--data.init_args.image_size=32", "--data.init_args.batch_size=16", "--data.init_args.num_workers=0",
                "--data.init_args.test_dir=test",
                "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--trainer.devices=1", "--model.warmup_epochs=0.3",
                "--model.mixup_alpha=0", "--model.optimizer.init_args.lr=0.002", NO_PROGRESS_BAR]
    fit = _dcls_zoo("fit", "-c", FINETUNE, *finetune, cwd=tmp_path, env=env)
    assert "new classifier head.fc for 4 classes" in fit.stdout + fit.stderr
    assert "input conv stem.0 adapted to 3 channels" in fit.stdout + fit.stderr
    (tuned,) = (tmp_path / "logs" / "finetune").glob("version_*")
    tuned_summary = json.loads((tuned / "summary.json").read_text())
    assert tuned_summary["arch"] == "convnext_dcls_atto"  # the weights brought their model
    assert tuned_summary["global_steps"] == 74

    # 4. test the best checkpoint with the same command; the card's recipe reproduces it on the class folders
    _dcls_zoo("test", "-c", FINETUNE, *finetune, "--ckpt_path=best", cwd=tmp_path, env=env)
    (evaluation,) = (tuned / "test").glob("*")
    tested = _tested_top1(evaluation)
    assert tested == pytest.approx(tuned_summary["test/top1"], abs=1e-4)
    import numpy as np
    from torchvision.datasets import ImageFolder

    folder_test = ImageFolder(str(folders / "test"))  # the DataModule's own order of the test folder
    rgb = _images(tmp_path / "tuned_test.npz", [np.asarray(Image.open(path).convert("RGB")) for path, _ in folder_test.samples],
                  [label for _, label in folder_test.samples])
    tuned_export = tmp_path / tuned_summary["export_dir"]
    assert _card_top1(f"local-dir:{tuned_export}", tuned_export / "README.md", rgb, tmp_path, env) == pytest.approx(tested, abs=1e-6)

    # the averaged weights never hide what training learned: on 400 test images, the EMA export within a
    # point of the raw weights of the same last.ckpt (a fixed 0.999 decay stays near the start: see test_averaging)
    last = tuned / "checkpoints" / "last.ckpt"
    _dcls_zoo("export", str(last), "--out", str(tmp_path / "raw"), "--no-ema", cwd=tmp_path, env=env)
    _dcls_zoo("export", str(last), "--out", str(tmp_path / "ema"), "--ema", cwd=tmp_path, env=env)
    raw = _card_top1(f"local-dir:{tmp_path / 'raw'}", tmp_path / "raw" / "README.md", rgb, tmp_path, env)
    ema = _card_top1(f"local-dir:{tmp_path / 'ema'}", tmp_path / "ema" / "README.md", rgb, tmp_path, env)
    assert raw > 0.5 and ema >= raw - 0.01, (ema, raw)

    # 5. push the fine-tuned export, and load it back from the Hub through its own card
    _dcls_zoo("push", str(tuned_export), "--repo-id", "tester/finetuned", cwd=tmp_path, env=env)
    assert _card_top1("hf-hub:tester/finetuned", tuned_export / "README.md", rgb, tmp_path, env) == pytest.approx(
        tested, abs=1e-6)
    card = (tuned_export / "README.md").read_text()
    assert "## Training" in card and "fine-tuned from hf-hub:tester/quick" in card
    assert re.search(r"\| classes \| 4 \|", card)
