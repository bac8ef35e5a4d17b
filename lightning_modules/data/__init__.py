"""The template's data: LightningDataModules and the Fashion-MNIST images they read without downloads.

- :mod:`.datamodules`: Fashion-MNIST (embedded subset or the full official files), ImageFolder,
  synthetic; every one checks its arguments at ``__init__`` and knows its classes and channels.
- :mod:`.sampling`: the per-epoch seeded shuffle and the loader that resumes mid-epoch.
- :mod:`.transforms`: timm's RandAugment posterize, defined for 0 bits on every Pillow.
- :mod:`.fashion_mnist`: the IDX reader (numpy only) and the stratified subset committed here
  (``fashion_mnist_subset.npz``, rebuilt by ``python -m lightning_modules.data.build_subset``).

The embedded images live with the template, not in the layer library: only the template trains.
Configs name the DataModules as ``lightning_modules.data.FashionMNISTDataModule``.
"""

from .datamodules import FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule, TensorImageDataset
from .sampling import ResumableDataLoader, SeededShuffleSampler

__all__ = [
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ResumableDataLoader",
    "SeededShuffleSampler",
    "SyntheticDataModule",
    "TensorImageDataset",
]
