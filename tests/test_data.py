"""The data layer: IDX reader, official Fashion-MNIST files, the embedded subset and the DataModules."""

from __future__ import annotations

import gzip
import itertools
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from lightning_modules.data import (
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SeededShuffleSampler,
    SyntheticDataModule,
)
from lightning_modules.data.build_subset import build_subset
from lightning_modules.data.fashion_mnist import (
    CLASS_NAMES,
    EMBEDDED_PATH,
    embedded_source_indices,
    find_idx_files,
    load_embedded,
    load_idx_split,
    read_idx,
    read_idx_header,
    stratified_split,
    stratified_subset,
)

DEBIAN_DIRS = [Path("/usr/share/datasets/fashion-mnist"), Path("/tmp/fm/usr/share/datasets/fashion-mnist")]
DEBIAN_DIR = next((d for d in DEBIAN_DIRS if (d / "train-images-idx3-ubyte.gz").is_file()), None)
needs_official = pytest.mark.skipif(
    DEBIAN_DIR is None, reason="Debian dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)"
)

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, array: np.ndarray, gzipped: bool = False) -> Path:
    """An IDX file written by hand (struct, big-endian), independent of the reader under test."""
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def write_fashion_dir(directory: Path, per_class_train: int = 30, per_class_test: int = 10, gzipped: bool = True,
                      splits=("train", "test")) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Official-format files made of real (embedded) images; returns what was written per split."""
    written = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        if split not in splits:
            continue
        images, labels = load_embedded(split)
        idx = stratified_subset(labels, per_class, seed=5)
        images, labels = images[idx], labels[idx].astype(np.uint8)
        prefix = "train" if split == "train" else "t10k"
        suffix = ".gz" if gzipped else ""
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gzipped)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gzipped)
        written[split] = (images, labels.astype(np.int64))
    return written


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, dtype, gzipped):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gzipped)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert read_idx_header(path) == (np.dtype(dtype), (3, 5, 7))


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain.gz", array, gzipped=False)), array)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "packed", array, gzipped=True)), array)


def test_read_idx_errors_name_the_file_and_the_problem(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((2, 3), np.uint8)).read_bytes()
    cases = {
        "magic": b"\x01\x02" + good[2:],  # first two bytes must be zero
        "unknown IDX data type 0x07": good[:2] + b"\x07" + good[3:],
        "0 dimensions": good[:3] + b"\x00",
        "truncated IDX header": good[:6],
        "holds 5 bytes": good[:-1],
        "holds 7 bytes": good + b"\x00",
    }
    for expected, content in cases.items():
        path = tmp_path / "bad"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=expected) as info:
            read_idx(path)
        assert str(path) in str(info.value)
    path.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(path)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


@needs_official
def test_read_idx_official_debian_files():
    labels = read_idx(DEBIAN_DIR / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # upstream's first train labels
    np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
    images, test_labels = load_idx_split(DEBIAN_DIR, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert test_labels.dtype == np.int64 and test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    np.testing.assert_array_equal(np.bincount(test_labels), [1000] * 10)
    assert images.min() == 0 and images.max() == 255


@pytest.mark.parametrize(
    "layout, gzipped",
    [(".", True), (".", False), ("FashionMNIST/raw", False), ("FashionMNIST/raw", True)],
)
def test_load_idx_split_finds_debian_and_torchvision_layouts(tmp_path, layout, gzipped):
    written = write_fashion_dir(tmp_path / layout, gzipped=gzipped)
    for split in ("train", "test"):
        images, labels = load_idx_split(tmp_path, split)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, written[split][0])
        np.testing.assert_array_equal(labels, written[split][1])
    assert find_idx_files(tmp_path, "test")[0] == tmp_path / layout / ("t10k-images-idx3-ubyte" + (".gz" if gzipped else ""))


def test_load_idx_split_missing_and_incomplete(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_idx_split(tmp_path / "nowhere", "train")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz", "FashionMNIST/raw/train-images-idx3-ubyte"):
        assert name in message

    write_fashion_dir(tmp_path, splits=("train",))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: found only .*train-images-idx3-ubyte.gz"):
        load_idx_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_idx_split(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_idx_split(tmp_path, "val")


def test_load_idx_split_rejects_inconsistent_files(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="holds 4 images but .* holds 3 labels"):
        load_idx_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 10], np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_idx_split(tmp_path, "test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        load_idx_split(tmp_path, "test")


# --------------------------------------------------------------------------- stratified sampling


def test_stratified_subset():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx = stratified_subset(labels, 7, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [7] * 4)
    np.testing.assert_array_equal(idx, stratified_subset(labels, 7, seed=3))
    assert not np.array_equal(idx, stratified_subset(labels, 7, seed=4))
    with pytest.raises(ValueError, match="class 0 has only 10"):
        stratified_subset(labels, 11, seed=0)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        stratified_subset(labels, 0, seed=0)


def test_stratified_split():
    labels = np.repeat(np.arange(10), 600)
    rest, held = stratified_split(labels, 500, seed=0)
    assert len(held) == 500 and len(rest) == 5500
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, held])), np.arange(6000))
    np.testing.assert_array_equal(np.bincount(labels[held]), [50] * 10)
    # uneven: proportional shares that still add up exactly
    labels = np.repeat(np.arange(3), [50, 30, 20])
    rest, held = stratified_split(labels, 7, seed=1)
    assert len(held) == 7 and not set(rest) & set(held)
    np.testing.assert_array_equal(np.bincount(labels[held]), [4, 2, 1])  # 3.5, 2.1, 1.4 -> largest remainder
    for size in (0, 100):
        with pytest.raises(ValueError, match=rf"size must be in \[1, 99\] for 100 labels, got {size}"):
            stratified_split(labels, size, seed=0)


# --------------------------------------------------------------------------- embedded subset


def test_embedded_subset_shapes_and_balance():
    assert EMBEDDED_PATH.is_file() and EMBEDDED_PATH.stat().st_size < 5_000_000
    for split, n, per_class, total in (("train", 6000, 600, 60000), ("test", 1000, 100, 10000)):
        images, labels = load_embedded(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
        indices = embedded_source_indices(split)
        assert indices.dtype == np.int64 and len(indices) == n
        assert np.all(np.diff(indices) > 0) and 0 <= indices[0] and indices[-1] < total
        assert images.std() > 50  # real images, not blanks
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


@needs_official
@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_subset_is_the_official_images_at_its_indices(split):
    official_images, official_labels = load_idx_split(DEBIAN_DIR, split)
    images, labels = load_embedded(split)
    indices = embedded_source_indices(split)
    np.testing.assert_array_equal(images, official_images[indices])
    np.testing.assert_array_equal(labels, official_labels[indices])


def test_build_subset_is_reproducible_and_traceable(tmp_path):
    written = write_fashion_dir(tmp_path / "src", per_class_train=12, per_class_test=6, gzipped=False)
    a = build_subset(tmp_path / "src", tmp_path / "a.npz", train_per_class=5, test_per_class=2, seed=7)
    with np.load(tmp_path / "a.npz") as npz:
        for key, value in a.items():
            np.testing.assert_array_equal(npz[key], value)
        assert npz["train_images"].dtype == np.uint8 and npz["seed"] == 7
    for split, per_class in (("train", 5), ("test", 2)):
        source_images, source_labels = written[split]
        idx = a[f"{split}_indices"]
        np.testing.assert_array_equal(np.bincount(a[f"{split}_labels"]), [per_class] * 10)
        np.testing.assert_array_equal(a[f"{split}_images"], source_images[idx])
        np.testing.assert_array_equal(a[f"{split}_labels"], source_labels[idx])
    b = build_subset(tmp_path / "src", tmp_path / "b.npz", train_per_class=5, test_per_class=2, seed=7)
    c = build_subset(tmp_path / "src", tmp_path / "c.npz", train_per_class=5, test_per_class=2, seed=8)
    np.testing.assert_array_equal(a["train_indices"], b["train_indices"])
    assert not np.array_equal(a["train_indices"], c["train_indices"])


# --------------------------------------------------------------------------- FashionMNISTDataModule


def test_fashion_mnist_attributes_known_after_init():
    dm = FashionMNISTDataModule(image_size=40)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, 40)
    assert dm.class_names == list(CLASS_NAMES)
    assert dm.train_set is None  # nothing loaded yet


def test_training_order_is_a_function_of_the_epoch_seed():
    dm = FashionMNISTDataModule(batch_size=100, augment=False)
    first_labels = lambda: next(iter(dm.train_dataloader()))[1]  # noqa: E731
    dm.reseed(5)
    a = first_labels()
    torch.randperm(10)  # other users of the global generator do not matter
    dm.reseed(6)
    b = first_labels()
    dm.reseed(5)
    assert torch.equal(first_labels(), a) and not torch.equal(a, b)
    assert sorted(dm.train_sampler) == list(range(5500))  # a permutation


def test_fashion_mnist_embedded_batches_and_normalisation():
    dm = FashionMNISTDataModule(batch_size=128, augment=False)
    train = dm.train_dataloader()
    assert isinstance(train.sampler, SeededShuffleSampler) and train.drop_last
    assert len(train) == 5500 // 128
    batches = list(train)
    assert all(x.shape == (128, 1, 32, 32) and x.dtype == torch.float32 for x, _ in batches)
    assert all(y.shape == (128,) and y.dtype == torch.int64 for _, y in batches)
    assert len(torch.cat([y for _, y in batches]).unique()) == 10
    # normalised with the train statistics: mean 0, std 1 over the (whole, unaugmented) train set
    everything = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-3
    assert 0.15 < dm.mean[0] < 0.35 and 0.25 < dm.std[0] < 0.45  # padded Fashion-MNIST pixel statistics

    val, test = dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last and not test.drop_last
    val_labels = torch.cat([y for _, y in val])
    np.testing.assert_array_equal(np.bincount(val_labels.numpy()), [50] * 10)
    test_labels = torch.cat([y for _, y in test])
    np.testing.assert_array_equal(test_labels.numpy(), load_embedded("test")[1])  # in order, all 1,000
    assert test.pin_memory == torch.cuda.is_available()
    predicted = next(iter(dm.predict_dataloader()))
    first = next(iter(test))
    assert torch.equal(predicted[0], first[0]) and torch.equal(predicted[1], first[1])


def test_fashion_mnist_val_is_carved_from_train_without_overlap():
    dm = FashionMNISTDataModule(val_size=300, seed=3)
    dm.setup("fit")
    train_idx, val_idx = dm.split_indices["train"], dm.split_indices["val"]
    assert len(val_idx) == 300 and len(train_idx) == 5700 and not set(train_idx) & set(val_idx)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(6000))
    images, labels = load_embedded("train")
    x, y = dm.val_set[7]
    assert y.item() == labels[val_idx[7]]
    raw = (x * dm.std[0] + dm.mean[0]) * 255
    np.testing.assert_allclose(raw[0, 2:30, 2:30].numpy(), images[val_idx[7]], atol=1e-3)
    other = FashionMNISTDataModule(val_size=300, seed=4)
    other.setup()
    assert not np.array_equal(other.split_indices["val"], val_idx)


def test_fashion_mnist_padding_is_centred_zero():
    dm = FashionMNISTDataModule(image_size=35, augment=False)
    dm.setup()
    images, _ = load_embedded("test")
    x, _ = dm.test_set[0]
    assert x.shape == (1, 35, 35)
    raw = ((x * dm.std[0] + dm.mean[0]) * 255).round()
    np.testing.assert_array_equal(raw[0, 3:31, 3:31].numpy(), images[0])  # 7 pixels: 3 before, 4 after
    border = torch.cat([raw[0, :3].flatten(), raw[0, 31:].flatten(), raw[0, :, :3].flatten(), raw[0, :, 31:].flatten()])
    assert torch.all(border == 0)


def test_fashion_mnist_augmentation_is_a_flip_and_small_shift():
    dm = FashionMNISTDataModule(augment=True)
    dm.setup()
    dataset = dm.train_set
    dataset.augment = False
    original = dataset[0][0]
    dataset.augment = True
    padded = torch.nn.functional.pad(original, (2, 2, 2, 2), value=float(-dm.mean[0] / dm.std[0]))
    candidates = [
        crop.flip(-1) if flip else crop
        for dy, dx, flip in itertools.product(range(5), range(5), (False, True))
        for crop in [padded[:, dy : dy + 32, dx : dx + 32]]
    ]
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        x, _ = dataset[0]
        matches = [i for i, c in enumerate(candidates) if torch.allclose(x, c)]
        assert matches, "augmented image is not a flip/shift of the original"
        seen.add(matches[0])
    assert len(seen) > 10


def test_fashion_mnist_max_shift_zero_flips_only():
    dm = FashionMNISTDataModule(augment=True, max_shift=0)
    dm.setup()
    dataset = dm.train_set
    dataset.augment = False
    original = dataset[3][0]
    dataset.augment = True
    torch.manual_seed(0)
    draws = [dataset[3][0] for _ in range(40)]
    flipped = sum(torch.equal(x, original.flip(-1)) for x in draws)
    assert sum(torch.equal(x, original) for x in draws) + flipped == 40 and 5 < flipped < 35
    assert "random horizontal flips" in dm.describe()
    assert "shifts of up to 2 px" in FashionMNISTDataModule().describe()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"image_size": 27}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 5501}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"val_size": 0}, "val_size"),
        ({"val_size": 6000}, "val_size"),
        ({"max_shift": -1}, "max_shift"),
        ({"max_shift": 1.5}, "max_shift"),
    ],
)
def test_fashion_mnist_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be .*got {list(kwargs.values())[0]}"):
        FashionMNISTDataModule(**kwargs)


def test_fashion_mnist_missing_or_incomplete_data_dir_fails_in_init(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataModule(data_dir=str(missing))
    message = str(info.value)
    assert message.startswith(f"data_dir={str(missing)!r}") and "t10k-images-idx3-ubyte" in message

    write_fashion_dir(tmp_path / "partial", splits=("train",))
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataModule(data_dir=str(tmp_path / "partial"))
    message = str(info.value)
    assert "data_dir=" in message and str(tmp_path / "partial") in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message

    write_fashion_dir(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x08\x08\x08\x03"))
    with pytest.raises(ValueError, match="data_dir=.*corrupt.*magic number"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "corrupt"))


def test_fashion_mnist_from_data_dir(tmp_path):
    written = write_fashion_dir(tmp_path / "FashionMNIST" / "raw", per_class_train=30, per_class_test=10, gzipped=False)
    with pytest.raises(ValueError, match=r"val_size must be an integer in \[1, 299\]"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_size=300)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=16, val_size=50, image_size=28, augment=False)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (250, 50, 100)
    assert len(dm.train_dataloader()) == 250 // 16
    train_images = written["train"][0]
    x, y = dm.val_set[0]
    assert x.shape == (1, 28, 28)
    assert y.item() == written["train"][1][dm.split_indices["val"][0]]
    raw = ((x * dm.std[0] + dm.mean[0]) * 255).round()
    np.testing.assert_array_equal(raw[0].numpy(), train_images[dm.split_indices["val"][0]])


@needs_official
def test_fashion_mnist_full_official_sizes():
    dm = FashionMNISTDataModule(data_dir=str(DEBIAN_DIR), val_size=5000)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)


def test_persistent_workers_follow_num_workers():
    assert FashionMNISTDataModule(num_workers=2).train_dataloader().persistent_workers
    assert not FashionMNISTDataModule(num_workers=0).val_dataloader().persistent_workers


# --------------------------------------------------------------------------- ImageFolderDataModule


def make_image_folder(root: Path, classes=(1, 5, 8), train_per_class=4, val_per_class=2) -> list[str]:
    """``root/{train,val}/<class>/*.png`` from real Fashion-MNIST images; returns the class folder names."""
    images, labels = load_embedded("test")
    names = []
    for c in classes:
        name = CLASS_NAMES[c].replace("/", "-").replace(" ", "_")
        names.append(name)
        members = np.flatnonzero(labels == c)
        for split, chosen in (("train", members[:train_per_class]), ("val", members[train_per_class : train_per_class + val_per_class])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).save(root / split / name / f"{i}.png")
    return sorted(names)


def test_image_folder_batches(tmp_path):
    names = make_image_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), batch_size=4, num_workers=0, image_size=32)
    assert (dm.num_classes, dm.in_chans, dm.image_size, dm.class_names) == (3, 3, 32, names)
    assert dm.train_set is None
    train = dm.train_dataloader()
    assert len(train) == 3 and train.drop_last and isinstance(train.sampler, SeededShuffleSampler)
    for x, y in train:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    val = dm.val_dataloader()
    assert isinstance(val.sampler, SequentialSampler)
    xs, ys = zip(*val)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(torch.cat(xs), torch.cat([x for x, _ in dm.val_dataloader()]))  # deterministic eval
    assert dm.test_set is dm.val_set


def test_image_folder_normalisation(tmp_path):
    make_image_folder(tmp_path)
    colour = (51, 102, 204)
    for split in ("train", "val"):
        Image.new("RGB", (40, 30), colour).save(tmp_path / split / "Bag" / "0000_const.png")
    identity = ImageFolderDataModule(str(tmp_path), num_workers=0, image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    identity.setup()
    const = [i for i, (path, _) in enumerate(identity.val_set.samples) if path.endswith("0000_const.png")]
    x, y = identity.val_set[const[0]]
    assert identity.class_names[y] == "Bag"
    expected = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255
    torch.testing.assert_close(x, expected.expand(3, 16, 16), atol=1e-6, rtol=0)
    imagenet = ImageFolderDataModule(str(tmp_path), num_workers=0, image_size=16)
    imagenet.setup()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(imagenet.val_set[const[0]][0], ((expected - mean) / std).expand(3, 16, 16), atol=1e-5, rtol=0)


def test_image_folder_test_dir(tmp_path):
    make_image_folder(tmp_path)
    make_image_folder(tmp_path / "holdout", val_per_class=0, train_per_class=1)
    (tmp_path / "test").symlink_to(tmp_path / "holdout" / "train")
    dm = ImageFolderDataModule(str(tmp_path), num_workers=0, image_size=32, test_dir="test")
    dm.setup()
    assert len(dm.val_set) == 6 and len(dm.test_set) == 3


def test_image_folder_errors_name_argument_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"root='{tmp_path / 'nope'}'")):
        ImageFolderDataModule(str(tmp_path / "nope"))
    make_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"val_dir='validation': {tmp_path / 'validation'} is not a directory")):
        ImageFolderDataModule(str(tmp_path), val_dir="validation")
    with pytest.raises(FileNotFoundError, match=re.escape(f"test_dir='test': {tmp_path / 'test'}")):
        ImageFolderDataModule(str(tmp_path), test_dir="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"val_dir: {tmp_path / 'empty'} has no class folders")):
        ImageFolderDataModule(str(tmp_path), val_dir="empty")
    (tmp_path / "val" / "Sandal").rename(tmp_path / "val" / "Sandals")
    with pytest.raises(ValueError, match=r"val_dir: the classes of .*val differ .*missing: \['Sandal'\], not in train: \['Sandals'\]"):
        ImageFolderDataModule(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, name",
    [({"crop_pct": 0.0}, "crop_pct"), ({"re_prob": 1.5}, "re_prob"), ({"batch_size": -2}, "batch_size"),
     ({"image_size": 0}, "image_size"), ({"std": (1.0, 0.0, 1.0)}, "std"), ({"mean": (0.5,)}, "mean")],
)
def test_image_folder_rejects_bad_values(tmp_path, kwargs, name):
    make_image_folder(tmp_path)
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        ImageFolderDataModule(str(tmp_path), **kwargs)


def test_image_folder_rejects_bad_transform_arguments(tmp_path):
    make_image_folder(tmp_path)
    with pytest.raises(ValueError, match="interpolation='bogus'"):
        ImageFolderDataModule(str(tmp_path), interpolation="bogus")
    with pytest.raises(ValueError, match="auto_augment='bogus'"):
        ImageFolderDataModule(str(tmp_path), auto_augment="bogus")


# --------------------------------------------------------------------------- SyntheticDataModule


def all_batches(dm, split="train"):
    dm.setup()
    dataset = getattr(dm, f"{split}_set")
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def test_synthetic_is_deterministic_by_seed():
    a, b, c = (SyntheticDataModule(seed=s) for s in (0, 0, 1))
    for split in ("train", "val", "test"):
        xa, ya = all_batches(a, split)
        xb, yb = all_batches(b, split)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, all_batches(c, split)[0])


def test_synthetic_classes_have_distinct_patterns():
    dm = SyntheticDataModule(num_classes=5, in_chans=2, image_size=12, num_train=100, num_val=10, num_test=50, batch_size=10)
    assert (dm.num_classes, dm.in_chans, dm.image_size, len(dm.class_names)) == (5, 2, 12, 5)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 2, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = all_batches(dm, "train")
    np.testing.assert_array_equal(np.bincount(y.numpy()), [20] * 5)
    assert abs(x.std().item() - 1) < 0.1
    patterns = dm.patterns.flatten(1)
    distances = torch.cdist(patterns, patterns) + torch.eye(5) * 1e9
    assert distances.min() > 5  # far apart compared with the per-image noise
    # every class's mean image is close to its own pattern and far from the others
    means = torch.stack([x[y == c].mean(0).flatten() for c in range(5)])
    assert torch.equal(torch.cdist(means, patterns / 1.25**0.5).argmin(1), torch.arange(5))
    # and a nearest-pattern classifier labels the test split correctly
    xt, yt = all_batches(dm, "test")
    assert torch.equal(torch.cdist(xt.flatten(1), patterns).argmin(1), yt)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_classes": 1}, "num_classes"), ({"image_size": 3}, "image_size"), ({"num_train": 16}, "num_train"),
     ({"batch_size": 0}, "batch_size"), ({"num_val": 0}, "num_val"), ({"in_chans": 0}, "in_chans")],
)
def test_synthetic_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        SyntheticDataModule(**kwargs)
