"""LightningDataModules for image classification: Fashion-MNIST (embedded or full), ImageFolder, synthetic.

Every DataModule knows ``num_classes``, ``in_chans``, ``image_size`` and ``class_names`` right
after ``__init__`` (the CLI links ``data.num_classes`` and ``data.in_chans`` to the model), checks
its arguments and paths there (``ValueError`` / ``FileNotFoundError`` naming the argument), and
yields ``(x, y)`` batches: ``x`` float32 ``(B, in_chans, image_size, image_size)`` normalised,
``y`` int64 ``(B,)``. The train loader shuffles and drops the last incomplete batch; validation,
test and predict (= test) loaders keep the order and every example.

In YAML::

    data:
      class_path: lightning_modules.data.FashionMNISTDataModule   # or FashionMNISTDataModule
      init_args: {batch_size: 128, image_size: 32}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from dcls_zoo.errors import DclsZooError

from .fashion_mnist import CLASS_NAMES, find_idx_files, load_embedded, load_idx_split, read_idx_header, stratified_split
from .sampling import ResumableDataLoader, SeededShuffleSampler
from .transforms import posterize_defined_for_zero_bits

__all__ = [
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "TensorImageDataset",
    "UnreadableImageError",
    "load_image",
]


_FASHION_SIDE = 28  # Fashion-MNIST images are _FASHION_SIDE x _FASHION_SIDE


def _require(condition: bool, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


class TensorImageDataset(Dataset):
    """``(x, y)`` pairs from in-memory images, normalised per channel, optionally augmented.

    Args:
        images: ``uint8`` (pixels 0..255, divided by 255 first) or float ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        mean, std: per-channel statistics (``C`` values, in units of ``images / 255`` for uint8).
        augment: random horizontal flip and a random translation by up to ``max_shift`` pixels
            with zero fill (= random crop of the zero-padded image), applied before normalising.

    Returns (per item): ``x`` float32 ``(C, H, W)``, ``y`` int64 scalar.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 augment: bool = False, max_shift: int = 2):
        if images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        self.images, self.labels = images, labels.long()
        self.offset = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * scale
        self.scale = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * scale
        self.augment, self.max_shift = augment, max_shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        if self.augment:
            s = self.max_shift
            h, w = x.shape[-2:]
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            x = F.pad(x, (s, s, s, s))[:, dy : dy + h, dx : dx + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x.float() - self.offset) / self.scale, self.labels[index]


class UnreadableImageError(DclsZooError, ValueError):
    """An image file the data cannot decode (the message names it)."""


def load_image(path: str) -> Image.Image:
    """An image file as RGB (torchvision's default loader), or :class:`UnreadableImageError` naming the
    file: a truncated or corrupt JPEG in a class folder is one line, not a worker's traceback."""
    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL's decode errors (UnidentifiedImageError is an OSError)
        raise UnreadableImageError(
            f"{path} is not a readable image ({type(error).__name__}: {error}); remove or replace it"
        ) from None


def _available_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _ImageDataModule(L.LightningDataModule):
    """Shared loaders; subclasses set the four attributes in ``__init__`` and build the datasets."""

    num_classes: int
    in_chans: int
    image_size: int
    class_names: list[str]
    hub_dataset: str | None = None  # the Hugging Face Hub id of the dataset, for model cards

    def __init__(self, batch_size: int, num_workers: int):
        super().__init__()
        _require(isinstance(batch_size, int) and batch_size > 0, "batch_size", batch_size, "a positive integer")
        _require(isinstance(num_workers, int) and num_workers >= 0, "num_workers", num_workers, "an integer >= 0")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.shuffle_seed = 0
        self.train_sampler: SeededShuffleSampler | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, int] | None = None  # from a checkpoint, for the next train loader
        # Creating a data iterator draws a worker seed; this generator keeps that draw away from the
        # global generator, whose per-epoch state EpochSeed fixes.
        self.loader_generator = torch.Generator().manual_seed(0)

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """``(train, val, test)`` datasets of ``(x, y)`` pairs."""
        raise NotImplementedError

    def data_config(self) -> dict[str, Any]:
        """The evaluation preprocessing of this data in timm's ``data_config`` keys, for Hub exports.

        An export writes this into ``config.json["pretrained_cfg"]``; whoever loads the export
        (``timm.create_model("hf-hub:...")`` or ``"local-dir:..."``) gets the val/test tensors of this
        DataModule from the raw images with the one call ::

            transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
            x = transform(pil_image)  # = this DataModule's val/test x for that image

        (Fashion-MNIST: a 28x28 mode ``"L"`` image, ``PIL.Image.fromarray(uint8 array)``;
        ImageFolder: the file opened as RGB, as its loader does; synthetic data has no images,
        see :class:`SyntheticDataModule`.) Every key timm's evaluation transform reads is set, so no
        timm default fills in: ``input_size`` ``(in_chans, image_size, image_size)``,
        ``interpolation``, ``mean`` and ``std`` (``in_chans`` values), ``crop_pct`` and
        ``crop_mode``. Calls :meth:`setup` first (some statistics are measured on the train images).
        """
        self.setup()
        config: dict[str, Any] = {"input_size": (self.in_chans, self.image_size, self.image_size)}
        config.update(self._eval_config())
        return config

    def _eval_config(self) -> dict[str, Any]:
        """``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode`` for :meth:`data_config` (after ``setup``)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (once; every stage gets all three)."""
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self._build_datasets()

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        train = split == "train"
        dataset = getattr(self, f"{split}_set")
        # no more workers than cores: a config written for a GPU server (8 workers) runs on a laptop
        # without PyTorch's over-subscription warning on every command
        workers = min(self.num_workers, _available_cores())
        common = dict(
            batch_size=self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
        if not train:
            return DataLoader(dataset, **common)
        self.train_sampler = SeededShuffleSampler(len(dataset), seed=self.shuffle_seed)
        self._train_loader = ResumableDataLoader(
            dataset, sampler=self.train_sampler, drop_last=True, generator=self.loader_generator, **common
        )
        if self._train_loader_state:
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's place in its epoch (see :class:`ResumableDataLoader`)."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores the DataModule before anything asks for a loader. It also hands the
        # loader its own saved state, but only when the loader is created after the loops are
        # restored, and ``trainer.estimated_stepping_batches`` (the schedule's length, asked for in
        # configure_optimizers) creates it before: so the DataModule carries the state over.
        self._train_loader_state = state_dict.get("train_loader") or None

    def reseed(self, seed: int) -> None:
        """Fix the training order of the next epoch (``EpochSeed`` calls this at every epoch start)."""
        self.shuffle_seed = seed
        self.loader_generator.manual_seed(seed)
        if self.train_sampler is not None:
            self.train_sampler.seed = seed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test images, in order, as ``(x, y)`` batches."""
        return self._loader("test")


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Exact mean and std of ``uint8`` pixels, in units of ``pixel / 255`` (via a 256-bin histogram)."""
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    var = float((counts * values**2).sum() / n) - mean**2
    return mean, float(np.sqrt(max(var, 0.0)))


class FashionMNISTDataModule(_ImageDataModule):
    """Fashion-MNIST: the subset embedded in the package, or the full official files.

    ``data_dir=None``: train = the 6,000 embedded train images minus a stratified ``val_size``
    validation set; test = the 1,000 embedded test images (from the official test split).
    ``data_dir=DIR``: the same from the official 60,000 / 10,000 IDX files in ``DIR`` (Debian
    layout, e.g. ``/usr/share/datasets/fashion-mnist``, or torchvision's ``DIR/FashionMNIST/raw``).

    Images are zero-padded (centred) from 28 to ``image_size``, 1 channel, and normalised with the
    mean and std of the padded train images (``self.mean``, ``self.std``, set by ``setup``, which
    also records ``self.split_indices``: the ``"train"`` and ``"val"`` rows of the train split).
    With ``augment``, train images are flipped horizontally at random and shifted by up to
    ``max_shift`` pixels. Batches: ``x`` float32 ``(B, 1, image_size, image_size)``, ``y`` int64 ``(B,)``.
    :meth:`data_config` expresses the padding and normalisation in timm's keys, so timm's eval
    transform turns a 28x28 mode ``"L"`` image into the val/test tensor (see ``_eval_config``).

    Args:
        data_dir: directory of the official IDX files, or ``None`` for the embedded subset.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0 is fine: the data is in memory).
        image_size: output height and width, >= 28.
        val_size: validation images carved (stratified by class) out of the train split.
        augment: flip + translate the train images.
        max_shift: the largest translation, in pixels (0: flips only).
        seed: seed of the validation split.

    Raises:
        ValueError: a bad argument (the message names it).
        FileNotFoundError: ``data_dir`` misses files (the message names ``data_dir``, the path and
            the files looked for).
    """

    hub_dataset = "zalando-datasets/fashion_mnist"

    def __init__(self, data_dir: str | None = None, batch_size: int = 128, num_workers: int = 0, image_size: int = 32,
                 val_size: int = 500, augment: bool = True, max_shift: int = 2, seed: int = 0):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        _require(isinstance(image_size, int) and image_size >= 28, "image_size", image_size, "an integer >= 28 (images are 28x28, padded up)")
        self.data_dir = data_dir
        if data_dir is not None:
            self._in_data_dir(lambda: find_idx_files(data_dir, "test"))  # both splits must be there
        num_train = self._split_size("train")
        _require(isinstance(val_size, int) and 1 <= val_size < num_train, "val_size", val_size,
                 f"an integer in [1, {num_train - 1}] (the train split has {num_train} images)")
        _require(batch_size <= num_train - val_size, "batch_size", batch_size,
                 f"<= {num_train - val_size}, the train images left after val_size={val_size}")
        _require(isinstance(max_shift, int) and not isinstance(max_shift, bool) and max_shift >= 0, "max_shift",
                 max_shift, "an integer >= 0 (pixels; 0: flips only)")
        self.val_size, self.augment, self.max_shift, self.seed = val_size, augment, max_shift, seed
        self.num_classes, self.in_chans, self.image_size = len(CLASS_NAMES), 1, image_size
        self.class_names = list(CLASS_NAMES)
        self.mean: tuple[float] | None = None
        self.std: tuple[float] | None = None
        self.split_indices: dict[str, np.ndarray] = {}

    def _split_size(self, split: str) -> int:
        """Images in the official ``split`` (``"train"``/``"test"``), from the file headers only."""
        if self.data_dir is None:
            return len(load_embedded(split)[1])
        return self._in_data_dir(lambda: read_idx_header(find_idx_files(self.data_dir, split)[0])[1][0])

    def describe(self) -> str:
        """The data in one sentence, for model cards: source, split sizes, size, augmentation."""
        source = ("Fashion-MNIST, the stratified subset embedded in dcls-zoo (from the official splits)"
                  if self.data_dir is None else f"Fashion-MNIST, the official files in {self.data_dir}")
        num_train, num_test = self._split_size("train"), self._split_size("test")
        augment = ("no augmentation" if not self.augment else "random horizontal flips" if not self.max_shift
                   else f"random flips and shifts of up to {self.max_shift} px")
        return (f"{source}: {num_train - self.val_size:,} train / {self.val_size:,} validation (carved from the "
                f"train split, seed {self.seed}) / {num_test:,} test images, 28x28 zero-padded to "
                f"{self.image_size}x{self.image_size}, {augment}")

    def _in_data_dir(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, prefixing a missing-file or bad-file error with ``data_dir``."""
        try:
            return fn()
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"data_dir={self.data_dir!r}: {e}") from e

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if self.data_dir is None:
            return load_embedded(split)
        return self._in_data_dir(lambda: load_idx_split(self.data_dir, split))

    def _pad(self, images: np.ndarray) -> Tensor:
        """``uint8 (N, 28, 28)`` -> ``uint8 (N, 1, image_size, image_size)``, zero-padded, centred.

        ``(image_size - 28) // 2`` zeros go before (top, left), the rest after: torchvision's
        ``CenterCrop`` pads this way too, which :meth:`_eval_config` relies on (odd sizes included).
        """
        total = self.image_size - images.shape[-1]
        before = total // 2
        padded = np.pad(images, ((0, 0), (before, total - before), (before, total - before)))
        return torch.from_numpy(padded).unsqueeze(1)

    def _eval_config(self) -> dict[str, Any]:
        """Zero-pad 28 -> ``image_size``, centred, and normalise, in terms of timm's eval transform.

        timm's ``"center"`` crop mode is ``Resize(floor(image_size / crop_pct))`` (short side),
        ``CenterCrop(image_size)``, ``ToTensor`` and ``Normalize(mean, std)``. With
        ``crop_pct = image_size / 28.5`` the resize target is 28 (28.5 rather than 28 keeps the
        floor off a rounding edge; crop_pct > 1 is fine for timm): a 28x28 image is returned as is
        (torchvision's ``Resize`` skips images already at the size, so ``interpolation`` does not
        act on them), and ``CenterCrop`` pads it with zeros to ``image_size`` with the split of
        :meth:`_pad`. ``ToTensor`` divides by 255, the units of ``self.mean`` / ``self.std``.
        A larger image gets its short side scaled to 28 (``interpolation="bilinear"``), then the
        same centre crop / zero padding.
        """
        return {"interpolation": "bilinear", "mean": tuple(self.mean), "std": tuple(self.std),
                "crop_pct": self.image_size / (_FASHION_SIDE + 0.5), "crop_mode": "center"}

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        images, labels = self._load("train")
        test_images, test_labels = self._load("test")
        train_idx, val_idx = stratified_split(labels, self.val_size, self.seed)
        self.split_indices = {"train": train_idx, "val": val_idx}
        images, test_images = self._pad(images), self._pad(test_images)
        mean, std = _pixel_stats(images[torch.from_numpy(train_idx)].numpy())
        self.mean, self.std = (mean,), (std,)
        labels, test_labels = torch.from_numpy(labels), torch.from_numpy(test_labels)

        def subset(idx: np.ndarray, augment: bool = False) -> TensorImageDataset:
            idx = torch.from_numpy(idx)
            return TensorImageDataset(images[idx], labels[idx], self.mean, self.std, augment=augment,
                                      max_shift=self.max_shift)

        test = TensorImageDataset(test_images, test_labels, self.mean, self.std)
        return subset(train_idx, self.augment), subset(val_idx), test


class ImageFolderDataModule(_ImageDataModule):
    """An ImageNet-layout folder (``root/<split>/<class>/<image>``) with timm's transforms.

    Train images get ``timm.data.create_transform(is_training=True)`` (random resized crop, flip,
    ``auto_augment``, ``color_jitter`` when no auto-augment, random erasing with ``re_prob``);
    val/test images are resized to ``image_size / crop_pct`` and centre-cropped. ``num_classes``
    and ``class_names`` (sorted folder names) come from the train folder, scanned in ``__init__``.
    Batches: ``x`` float32 ``(B, 3, image_size, image_size)``, ``y`` int64 ``(B,)``.

    Args:
        root: dataset root.
        train_dir, val_dir: split folders under ``root``.
        test_dir: test folder under ``root``; ``None`` tests on ``val_dir``.
        crop_pct: centre-crop fraction for evaluation, in (0, 1].
        interpolation: resize interpolation (``"bicubic"``, ``"bilinear"``, ``"nearest"``...).
        auto_augment: timm auto-augment policy string, or ``None`` for none.
        re_prob: random-erasing probability in [0, 1].
        color_jitter: colour-jitter strength (used by timm only without auto-augment).
        mean, std: RGB normalisation (ImageNet's by default).

    Raises:
        FileNotFoundError: ``root`` or a split folder is missing or has no class folders.
        ValueError: a bad argument, or val/test classes that differ from the train classes.
    """

    def __init__(self, root: str, batch_size: int = 128, num_workers: int = 4, image_size: int = 224,
                 train_dir: str = "train", val_dir: str = "val", test_dir: str | None = None, crop_pct: float = 0.875,
                 interpolation: str = "bicubic", auto_augment: str | None = "rand-m9-mstd0.5-inc1", re_prob: float = 0.25,
                 color_jitter: float = 0.4, mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
                 std: tuple[float, float, float] = IMAGENET_DEFAULT_STD):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        _require(isinstance(image_size, int) and image_size >= 1, "image_size", image_size, "a positive integer")
        _require(0 < crop_pct <= 1, "crop_pct", crop_pct, "in (0, 1]")
        _require(0 <= re_prob <= 1, "re_prob", re_prob, "in [0, 1]")
        _require(color_jitter >= 0, "color_jitter", color_jitter, ">= 0")
        _require(len(mean) == 3, "mean", mean, "3 values (RGB)")
        _require(len(std) == 3 and min(std) > 0, "std", std, "3 positive values (RGB)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root={root!r}: {self.root} is not a directory (expected root/{train_dir}/<class>/<image>)")
        self.split_dirs = {"train": self._split_dir("train_dir", train_dir), "val": self._split_dir("val_dir", val_dir)}
        self.split_dirs["test"] = self.split_dirs["val"] if test_dir is None else self._split_dir("test_dir", test_dir)
        self.class_names = self._classes("train_dir", self.split_dirs["train"])
        for arg, split in (("val_dir", "val"), ("test_dir", "test")):
            classes = self._classes(arg, self.split_dirs[split])
            if classes != self.class_names:
                missing = sorted(set(self.class_names) - set(classes))
                extra = sorted(set(classes) - set(self.class_names))
                raise ValueError(
                    f"{arg}: the classes of {self.split_dirs[split]} differ from those of {self.split_dirs['train']} "
                    f"(missing: {missing}, not in train: {extra})"
                )
        self.num_classes, self.in_chans, self.image_size = len(self.class_names), 3, image_size
        self.mean, self.std, self.crop_pct, self.interpolation = tuple(mean), tuple(std), crop_pct, interpolation
        common = dict(input_size=image_size, interpolation=interpolation, mean=tuple(mean), std=tuple(std))
        try:
            self.train_transform = posterize_defined_for_zero_bits(
                create_transform(**common, is_training=True, auto_augment=auto_augment or None, re_prob=re_prob,
                                 color_jitter=color_jitter)
            )
            self.eval_transform = create_transform(**common, is_training=False, crop_pct=crop_pct, crop_mode="center")
        except (ValueError, KeyError, AssertionError) as e:
            raise ValueError(f"bad transform arguments (interpolation={interpolation!r}, auto_augment={auto_augment!r}): {e!r}") from e

    def describe(self) -> str:
        """The data in one sentence, for model cards."""
        augment = f"RandAugment {self.hparams.auto_augment}" if self.hparams.auto_augment else "no RandAugment"
        return (f"an image folder ({self.root}): {len(self.class_names)} classes, splits {self.split_dirs['train'].name} / "
                f"{self.split_dirs['val'].name} / {self.split_dirs['test'].name}, {self.image_size} px, {augment}")

    def _eval_config(self) -> dict[str, Any]:
        """The arguments of ``self.eval_transform``: the card recipe builds the same transform."""
        return {"interpolation": self.interpolation, "mean": self.mean, "std": self.std,
                "crop_pct": self.crop_pct, "crop_mode": "center"}

    def _split_dir(self, arg: str, name: str) -> Path:
        path = self.root / name
        if not path.is_dir():
            raise FileNotFoundError(f"{arg}={name!r}: {path} is not a directory")
        return path

    @staticmethod
    def _classes(arg: str, path: Path) -> list[str]:
        try:
            return find_classes(str(path))[0]
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{arg}: {path} has no class folders ({e})") from e

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train = ImageFolder(str(self.split_dirs["train"]), transform=self.train_transform, loader=load_image)
        val = ImageFolder(str(self.split_dirs["val"]), transform=self.eval_transform, loader=load_image)
        test = val if self.split_dirs["test"] == self.split_dirs["val"] else ImageFolder(
            str(self.split_dirs["test"]), transform=self.eval_transform, loader=load_image)
        return train, val, test


class SyntheticDataModule(_ImageDataModule):
    """Random but learnable images, for smoke tests.

    Each class has a fixed smooth random pattern (4x4 Gaussian noise upsampled bilinearly to
    ``image_size``, unit std); an image is its class pattern plus Gaussian noise of std ``noise``,
    scaled to unit variance. Labels are balanced. Everything is a function of ``seed``; the splits
    share the patterns and draw independent noise. ``self.patterns`` ``(num_classes, in_chans, S, S)``
    is set by ``setup``. Batches: ``x`` float32 ``(B, in_chans, S, S)``, ``y`` int64 ``(B,)``.

    No image transform applies: the examples are generated tensors, not images, and are fed to the
    model as they are. :meth:`data_config` records the input size and an identity normalisation
    (mean 0, std 1 per channel, ``crop_pct`` 1, no resize or crop for an ``S x S`` input).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 32, num_train: int = 256,
                 num_val: int = 64, num_test: int = 64, batch_size: int = 32, seed: int = 0, noise: float = 0.5):
        super().__init__(batch_size, num_workers=0)
        self.save_hyperparameters()
        _require(isinstance(num_classes, int) and num_classes >= 2, "num_classes", num_classes, "an integer >= 2")
        _require(isinstance(in_chans, int) and in_chans >= 1, "in_chans", in_chans, "a positive integer")
        _require(isinstance(image_size, int) and image_size >= 4, "image_size", image_size, "an integer >= 4")
        _require(isinstance(num_train, int) and num_train >= batch_size, "num_train", num_train, f">= batch_size={batch_size}")
        _require(isinstance(num_val, int) and num_val >= 1, "num_val", num_val, "a positive integer")
        _require(isinstance(num_test, int) and num_test >= 1, "num_test", num_test, "a positive integer")
        _require(noise >= 0, "noise", noise, ">= 0")
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.class_names = [f"class_{i}" for i in range(num_classes)]
        self.sizes, self.seed, self.noise = (num_train, num_val, num_test), seed, noise
        self.patterns: Tensor | None = None

    def describe(self) -> str:
        """The data in one sentence, for model cards."""
        train, val, test = self.sizes
        return (f"synthetic images (class patterns + noise {self.noise}, seed {self.seed}): {train} train / {val} "
                f"validation / {test} test, {self.in_chans}x{self.image_size}x{self.image_size}")

    def _eval_config(self) -> dict[str, Any]:
        """Identity normalisation (mean 0, std 1 per channel), no resize or crop (``crop_pct`` 1).

        The synthetic examples are generated float tensors, not images: no image transform
        reproduces them, and a model trained on them takes ``(B, in_chans, image_size, image_size)``
        tensors directly. The config only records that size and that no normalisation applies (an
        ``image_size`` image through the card recipe is just divided by 255).
        """
        return {"interpolation": "bilinear", "mean": (0.0,) * self.in_chans, "std": (1.0,) * self.in_chans,
                "crop_pct": 1.0, "crop_mode": "center"}

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        g = torch.Generator().manual_seed(self.seed)
        low = torch.randn(self.num_classes, self.in_chans, 4, 4, generator=g)
        patterns = F.interpolate(low, size=self.image_size, mode="bilinear", align_corners=False)
        self.patterns = patterns / patterns.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        scale = (1 + self.noise**2) ** 0.5
        datasets = []
        for n in self.sizes:
            labels = (torch.arange(n) % self.num_classes)[torch.randperm(n, generator=g)]
            noise = torch.randn(n, self.in_chans, self.image_size, self.image_size, generator=g)
            images = (self.patterns[labels] + self.noise * noise) / scale
            datasets.append(TensorImageDataset(images, labels, (0.0,) * self.in_chans, (1.0,) * self.in_chans))
        return tuple(datasets)
