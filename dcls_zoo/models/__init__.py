"""The model zoo: timm models with DCLS convolutions, registered in timm on import."""

from timm.layers import register_notrace_module

from ..layers import Dcls1d, Dcls2d, Dcls3d
from ..positions import clamp_model_positions_, dcls_layers, spread_model_positions_, stage_of
from . import convmixer_dcls  # noqa: F401  (registers the compact ConvMixer-dcls testbed in timm)
from . import convnext_dcls  # noqa: F401  (registers the ConvNeXt-dcls family in timm)
from . import resnet_dcls  # noqa: F401  (registers resnet50_dcls, resnet50_dcls_k6 in timm)
from .convmixer_dcls import ConvMixerDcls
from .convnext_dcls import ConvNeXtDcls
from .dclsify import Conversion, DclsifyReport, dclsify
from .factory import create_model, list_models

# timm's FX feature extraction (features_only with feature_cls="fx", its model tests) keeps
# these as leaf modules, as it does its own custom layers.
for _layer in (Dcls1d, Dcls2d, Dcls3d):
    register_notrace_module(_layer)

__all__ = [
    "ConvMixerDcls",
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
