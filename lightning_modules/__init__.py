"""dcls-zoo's research template: the ``dcls-zoo`` command, the LightningModule, DataModules and callbacks.

Everything a config names is imported here, so YAML can use short class names
(``class_path: FashionMNISTDataModule``, ``class_path: ClampPositions``).
"""

from .callbacks import HubPushCallback
from .module import ImageClassifier, NonFiniteLossError

__all__ = ["HubPushCallback", "ImageClassifier", "NonFiniteLossError"]
