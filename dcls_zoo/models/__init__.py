"""The model zoo: timm models with DCLS convolutions, registered in timm on import.

Families: :mod:`.convnext_dcls` (ConvNeXt-dcls, its Gaussian follow-up and the paper's baselines),
:mod:`.resnet_dcls` (ResNet-50-dcls); surgery for any model: :mod:`.dclsify`; the factory with
close-match hints: :mod:`.factory`.
"""

from timm.layers import register_notrace_module

from ..layers import Dcls1d, Dcls2d, Dcls3d
from . import (
    convmixer_dcls,  # noqa: F401  (registers the compact ConvMixer-dcls testbed in timm)
    convnext_dcls,  # noqa: F401  (registers the ConvNeXt-dcls family in timm)
    resnet_dcls,  # noqa: F401  (registers resnet50_dcls, resnet50_dcls_k6 in timm)
)
from .convmixer_dcls import ConvMixerDcls
from .convnext_dcls import ConvNeXtDcls
from .dclsify import ConvertedLayer, DclsifyReport, dclsify
from .factory import create_model, list_models
from .resnet_dcls import ResNetDcls

# timm's FX feature extraction (features_only with feature_cls="fx", its model tests) keeps
# these as leaf modules, as it does its own custom layers.
for _layer in (Dcls1d, Dcls2d, Dcls3d):
    register_notrace_module(_layer)

__all__ = [
    "ConvMixerDcls",
    "ConvNeXtDcls",
    "ConvertedLayer",
    "DclsifyReport",
    "ResNetDcls",
    "create_model",
    "dclsify",
    "list_models",
]
