"""The model zoo: timm models with DCLS convolutions, registered in timm on import."""

from . import convnext_dcls  # noqa: F401  (registers the ConvNeXt-dcls family in timm)
from . import resnet_dcls  # noqa: F401  (registers resnet50_dcls, resnet50_dcls_k6 in timm)
from .convnext_dcls import ConvNeXtDcls
from .dclsify import (
    Conversion,
    DclsifyReport,
    clamp_model_positions_,
    dcls_layers,
    dclsify,
    spread_model_positions_,
    stage_of,
)
from .factory import create_model, list_models

__all__ = [
    "ConvNeXtDcls",
    "Conversion",
    "DclsifyReport",
    "clamp_model_positions_",
    "create_model",
    "dcls_layers",
    "dclsify",
    "list_models",
    "spread_model_positions_",
    "stage_of",
]
