"""Export fidelity of ``data_config()``: the model card's timm recipe gives the DataModule's eval tensors.

The path walked is the user's: the config goes into ``config.json["pretrained_cfg"]`` through timm's
``save_config_for_hf`` (as ``dcls_zoo.save_pretrained`` writes it), the model is rebuilt with
``timm.create_model("local-dir:...")``, and the transform comes from
``timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models._hub import load_model_config_from_path, save_config_for_hf

from lightning_modules.data import FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule
from lightning_modules.data.fashion_mnist import load_embedded

NUM_IMAGES = 200  # raw embedded test images compared per Fashion-MNIST case
EVAL_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def card_model(data_config: dict, in_chans: int, num_classes: int, directory: Path) -> torch.nn.Module:
    """A small timm model exported with ``data_config`` and loaded back as a card user would."""
    model = timm.create_model("test_resnet", pretrained=False, in_chans=in_chans, num_classes=num_classes)
    directory.mkdir(parents=True)
    save_config_for_hf(model, directory / "config.json", data_config=data_config)
    written = load_model_config_from_path(directory)[0]
    loaded = timm.create_model(f"local-dir:{directory}", pretrained=False)
    for key in EVAL_KEYS:  # what config.json holds is what the loaded model carries
        assert loaded.pretrained_cfg[key] == written[key], key
    return loaded


def card_transform(data_config: dict, in_chans: int, num_classes: int, directory: Path):
    """The model card's recipe, on the model exported with ``data_config``."""
    model = card_model(data_config, in_chans, num_classes, directory)
    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


@pytest.fixture(scope="module")
def fashion_test_images() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_embedded("test")
    return images[:NUM_IMAGES], labels[:NUM_IMAGES]


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("image_size", [32, 33, 40])
def test_fashion_mnist_card_recipe_reproduces_test_tensors(tmp_path, fashion_test_images, image_size):
    data = FashionMNISTDataModule(image_size=image_size)
    transform = card_transform(data.data_config(), in_chans=1, num_classes=10, directory=tmp_path / "export")
    images, labels = fashion_test_images
    got, expected = [], []
    for i, (image, label) in enumerate(zip(images, labels)):
        pil = Image.fromarray(image)
        assert pil.mode == "L" and pil.size == (28, 28)
        x, y = data.test_set[i]
        assert int(y) == int(label)  # test_set keeps the embedded order
        got.append(transform(pil))
        expected.append(x)
    got, expected = torch.stack(got), torch.stack(expected)
    assert got.shape == (NUM_IMAGES, 1, image_size, image_size) and got.dtype == torch.float32
    # DataModule: (x - 255 mean) / (255 std); timm: (x / 255 - mean) / std -- equal up to float32 rounding
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_fashion_mnist_data_config_values():
    data = FashionMNISTDataModule()
    config = data.data_config()
    assert config == {"input_size": (1, 32, 32), "interpolation": "bilinear", "mean": data.mean, "std": data.std,
                      "crop_pct": 32 / 28.5, "crop_mode": "center"}
    assert len(data.mean) == 1 and 0 < data.mean[0] < 1 and 0 < data.std[0] < 1
    # the resize target of timm's centre mode is 28 for every allowed image_size
    for size in range(28, 1025):
        assert math.floor(size / (size / 28.5)) == 28, size


def test_fashion_mnist_card_recipe_on_a_larger_image(tmp_path, fashion_test_images):
    """A bigger image is scaled to 28 on its short side, then zero-padded like the 28x28 ones."""
    data = FashionMNISTDataModule(image_size=36)
    transform = card_transform(data.data_config(), in_chans=1, num_classes=10, directory=tmp_path / "export")
    x = transform(Image.fromarray(fashion_test_images[0][0]).resize((56, 56), Image.NEAREST))
    assert x.shape == (1, 36, 36)
    zero = (0.0 - data.mean[0]) / data.std[0]
    border = torch.ones(36, 36, dtype=torch.bool)
    border[4:32, 4:32] = False
    torch.testing.assert_close(x[0][border], torch.full((int(border.sum()),), zero), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- ImageFolder

SIZES = [(28, 28), (40, 30), (30, 40), (28, 28)]  # PIL (width, height), one per image of a class
CLASSES = ["boot", "coat", "shirt"]


def write_image_folder(root: Path) -> None:
    """``root/{train,val}/<class>/<i>.png``: RGB images made of embedded Fashion-MNIST images."""
    images, _ = load_embedded("test")
    k = 0
    for split in ("train", "val"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i, size in enumerate(SIZES):
                grey = np.asarray(Image.fromarray(images[k]).resize(size, Image.BILINEAR))
                k += 1
                rgb = np.stack([grey, np.flipud(grey), 255 - grey], axis=-1)  # three different channels
                Image.fromarray(np.ascontiguousarray(rgb)).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("crop_pct, interpolation", [(0.875, "bicubic"), (1.0, "bilinear")])
def test_image_folder_card_recipe_reproduces_val_tensors(tmp_path, crop_pct, interpolation):
    write_image_folder(tmp_path / "data")
    data = ImageFolderDataModule(str(tmp_path / "data"), batch_size=2, num_workers=0, image_size=32,
                                 crop_pct=crop_pct, interpolation=interpolation, mean=(0.3, 0.4, 0.5),
                                 std=(0.2, 0.25, 0.3))
    config = data.data_config()
    assert config == {"input_size": (3, 32, 32), "interpolation": interpolation, "mean": (0.3, 0.4, 0.5),
                      "std": (0.2, 0.25, 0.3), "crop_pct": crop_pct, "crop_mode": "center"}
    transform = card_transform(config, in_chans=3, num_classes=len(CLASSES), directory=tmp_path / "export")
    samples = data.val_set.samples
    assert len(samples) == len(CLASSES) * len(SIZES)
    for i, (path, _) in enumerate(samples):
        with Image.open(path) as image:
            x = transform(image.convert("RGB"))
        expected = data.val_set[i][0]
        assert x.shape == expected.shape == (3, 32, 32)
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("in_chans", [1, 3])
def test_synthetic_data_config_is_identity_normalisation(tmp_path, in_chans):
    data = SyntheticDataModule(in_chans=in_chans, image_size=16)
    config = data.data_config()
    assert config["input_size"] == (in_chans, 16, 16)
    assert config["mean"] == (0.0,) * in_chans and config["std"] == (1.0,) * in_chans
    model = card_model(config, in_chans=in_chans, num_classes=10, directory=tmp_path / "export")
    resolved = timm.data.resolve_data_config({}, model=model)
    # the export keeps mean 0 / std 1 (not timm's ImageNet default), and no resize or crop for 16x16 inputs
    assert tuple(resolved["mean"]) == (0.0,) * in_chans and tuple(resolved["std"]) == (1.0,) * in_chans
    assert resolved["input_size"] == (in_chans, 16, 16) and resolved["crop_pct"] == 1.0
    transform = timm.data.create_transform(**resolved)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, in_chans), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if in_chans == 1 else pixels)
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(transform(image), expected, atol=1e-6, rtol=0)
