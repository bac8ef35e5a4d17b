"""Replace DCLS layers by plain convolutions holding their dense kernels (inference and export).

After :func:`fuse` a model contains only standard ``nn.Conv1d/2d/3d`` layers, so ONNX,
``torch.export``, TorchScript and any inference runtime see an ordinary network, and the kernel
is no longer rebuilt from positions on every call. ``timm.utils.reparameterize_model`` does the
same through each layer's ``fuse()``.
"""

from __future__ import annotations

import copy

from torch import nn

from .layers import DclsConvNd
from .shared import SHARED_ATTRIBUTE, SharedPositionsDict

__all__ = ["fuse", "to_conv"]


def to_conv(layer: DclsConvNd) -> nn.Module:
    """An ``nn.ConvNd`` equivalent to ``layer`` (same padding, stride, groups, bias, padding mode)."""
    return layer.fuse()


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every DCLS layer replaced by an equivalent plain convolution.

    Shared position containers (``*.dcls_shared``) are removed as well, so the state dict holds
    plain convolution weights only.

    Args:
        model: any module (a single DCLS layer too).
        inplace: modify ``model`` itself instead of a deep copy.
    """
    if isinstance(model, DclsConvNd):
        return model.fuse()
    model = model if inplace else copy.deepcopy(model)
    layers = [(path, module) for path, module in model.named_modules() if isinstance(module, DclsConvNd)]
    for path, layer in layers:
        model.set_submodule(path, layer.fuse())
    for owner in list(model.modules()):
        if isinstance(getattr(owner, SHARED_ATTRIBUTE, None), SharedPositionsDict):
            delattr(owner, SHARED_ATTRIBUTE)
    return model
