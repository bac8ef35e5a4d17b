"""The shipped training transforms of every ImageNet-style recipe, on real images.

The configs' DataModules are built as the configs write them (only ``root`` points at RGB class
folders made from the embedded Fashion-MNIST images), with the Pillow a fresh install resolves.
RandAugment's rare extremes are walked on purpose: every op of every policy at its top and bottom
magnitude, then a few thousand ordinary random draws.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
import yaml
from helpers import QUICK_FIT, ROOT
from PIL import Image
from timm.data.auto_augment import AugmentOp

from lightning_modules.data import ImageFolderDataModule
from lightning_modules.data.fashion_mnist import CLASS_NAMES, load_embedded
from lightning_modules.data.transforms import _posterize

RECIPES = sorted(
    path.name
    for path in (ROOT / "configs").glob("*.yaml")
    if "ImageFolderDataModule" in path.read_text()
)


@pytest.fixture(scope="module")
def rgb_folders(tmp_path_factory) -> Path:
    """``root/{train,val}/<class>/*.png``: 3 classes x 8 real images, saved as RGB at 28x28 and 40x33."""
    root = tmp_path_factory.mktemp("rgb")
    images, labels = load_embedded("test")
    for c in (0, 5, 9):
        name = CLASS_NAMES[c].replace("/", "-").replace(" ", "_")
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:8]):
            image = Image.fromarray(images[i]).convert("RGB")
            if k % 2:
                image = image.resize((40, 33))
            image.save(root / ("train" if k < 6 else "val") / name / f"{i}.png")
    return root


def _data_module(recipe: str, root: Path) -> ImageFolderDataModule:
    config = yaml.safe_load((ROOT / "configs" / recipe).read_text())
    data = config["data"]
    assert data["class_path"].endswith("ImageFolderDataModule")
    init_args = dict(data.get("init_args") or {}, root=str(root), num_workers=0)
    return ImageFolderDataModule(**init_args)


def _augment_ops(transform) -> list[AugmentOp]:
    ops = []
    for stage in transform.transforms:
        ops.extend(getattr(stage, "ops", []))
        for sub_policy in getattr(stage, "policy", []):
            ops.extend(sub_policy)
    return ops


def test_the_recipes_are_found():
    assert {"convnext_dcls_tiny_in1k.yaml", "finetune.yaml", "resnet50_dcls_a3_in1k.yaml"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_augmentation_op_at_its_extremes(recipe, rgb_folders):
    data = _data_module(recipe, rgb_folders)
    ops = _augment_ops(data.train_transform)
    if data.hparams.auto_augment:
        assert ops, f"{recipe}: no RandAugment ops found in {data.train_transform}"
    image = Image.open(next((rgb_folders / "train").rglob("*.png"))).convert("RGB")
    for op in ops:
        saved = (op.prob, op.magnitude, op.magnitude_std)
        top = op.magnitude_max or 10.0
        try:
            op.prob, op.magnitude_std = 1.0, 0.0
            for magnitude in (0.0, top):
                op.magnitude = magnitude
                out = op(image)  # posterize keeps 0 bits at the top of the increasing policy
                assert isinstance(out, Image.Image) and out.size == image.size, op
        finally:
            op.prob, op.magnitude, op.magnitude_std = saved


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_train_transform_runs_on_real_images_long_enough(recipe, rgb_folders):
    """2,000 draws per recipe: at the m9 policy the 0-bit posterize came about once in 600."""
    data = _data_module(recipe, rgb_folders)
    data.setup()
    random.seed(0)
    torch.manual_seed(0)
    size = data.image_size
    for index in range(2000):
        x, y = data.train_set[index % len(data.train_set)]
        assert x.shape == (3, size, size) and torch.isfinite(x).all()


def test_zero_bit_posterize_is_black_as_pillow_12_defined_it():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8), "RGB")
    for bits in range(0, 9):
        expected = np.asarray(image) & np.uint8((0xFF << (8 - bits)) & 0xFF)  # keep the top `bits` bits
        assert np.array_equal(np.asarray(_posterize(image, bits)), expected), bits
    gray = image.convert("L")
    assert np.asarray(_posterize(gray, 0)).max() == 0 and _posterize(gray, 0).mode == "L"


def test_pillow_13_still_refuses_zero_bits():
    """What the op above guards against: if Pillow accepts 0 bits again, this guard can go."""
    from PIL import ImageOps

    if int(PIL.__version__.split(".")[0]) < 13:
        pytest.skip(f"Pillow {PIL.__version__} accepts 0 bits")
    with pytest.raises(ValueError, match="bits"):
        ImageOps.posterize(Image.new("RGB", (2, 2)), 0)


@pytest.mark.slow
def test_the_gray_quickstart_export_fine_tunes_on_rgb_folders(rgb_folders, tmp_path, monkeypatch):
    """The README's fine-tune command with a 1-channel export and 3-channel class folders."""
    import dcls_zoo
    from lightning_modules.commands.main import main

    export = tmp_path / "gray-export"
    dcls_zoo.save_pretrained(dcls_zoo.create_model("convnext_dcls_atto", num_classes=10, in_chans=1, patch_size=2), export)
    monkeypatch.chdir(tmp_path)
    code = main([
        "fit", "-c", str(ROOT / "configs" / "finetune.yaml"), "--model.arch=convnext_dcls_atto",
        "--model.model_kwargs={patch_size: 2}", f"--model.pretrained={export}",
        f"--data.init_args.root={rgb_folders}", "--data.init_args.image_size=32", "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0", "--trainer.accelerator=cpu", "--trainer.devices=1", *QUICK_FIT,
    ])
    assert code == 0
