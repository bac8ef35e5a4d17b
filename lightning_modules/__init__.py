"""dcls-zoo's research template: the ``dcls-zoo`` command, the LightningModule, DataModules and callbacks.

Everything a config names is imported here, so YAML and the command line can use short class
names (``--data=SyntheticDataModule``, ``class_path: ClampPositions``).
"""

from .callbacks import ClampPositions, EpochSeed, HubPushCallback, SigmaSchedule
from .data import FashionMNISTDataModule, ImageFolderDataModule, SyntheticDataModule
from .module import ImageClassifier, NonFiniteLossError
from .position_monitor import PositionMonitor

__all__ = [
    "ClampPositions",
    "EpochSeed",
    "FashionMNISTDataModule",
    "HubPushCallback",
    "ImageClassifier",
    "ImageFolderDataModule",
    "NonFiniteLossError",
    "PositionMonitor",
    "SigmaSchedule",
    "SyntheticDataModule",
]
