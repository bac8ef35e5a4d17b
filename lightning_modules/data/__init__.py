"""The template's data: LightningDataModules and the Fashion-MNIST images they read without downloads.

- :mod:`.datamodules`: Fashion-MNIST (embedded subset or the full official files), ImageFolder,
  synthetic; every one checks its arguments at ``__init__`` and knows its classes and channels.
- :mod:`.fashion_mnist`: the IDX reader (numpy only) and the stratified subset committed here
  (``fashion_mnist_subset.npz``, rebuilt by ``python -m lightning_modules.data.build_subset``).

The embedded images live with the template, not in the layer library: only the template trains.
Configs name the DataModules as ``lightning_modules.data.FashionMNISTDataModule``.
"""

from .datamodules import (
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SeededShuffleSampler,
    SyntheticDataModule,
    TensorImageDataset,
)

__all__ = [
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "SeededShuffleSampler",
    "SyntheticDataModule",
    "TensorImageDataset",
]
