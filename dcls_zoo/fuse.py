"""Replace DCLS layers by plain convolutions holding their dense kernels (inference and export).

After :func:`fuse` a model contains only standard ``nn.Conv1d/2d/3d`` layers, so ONNX,
``torch.export``, TorchScript and any inference runtime see an ordinary network, and the kernel
is no longer rebuilt from positions on every call.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import _DclsNd
from .shared import SharedPositions

__all__ = ["fuse", "to_conv"]

_CONV_BY_DIMS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@torch.no_grad()
def to_conv(layer: _DclsNd) -> nn.Module:
    """An ``nn.ConvNd`` equivalent to ``layer`` (same padding, stride, groups, bias, padding mode)."""
    weight = layer.weight
    conv = _CONV_BY_DIMS[layer.spatial_dims](
        layer.in_channels,
        layer.out_channels,
        layer.dilated_kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    conv.weight.copy_(layer.kernel())
    if layer.bias is not None:
        conv.bias.copy_(layer.bias)
    conv.train(layer.training)
    return conv


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every DCLS layer replaced by an equivalent plain convolution.

    Shared position modules (``*.dcls_shared``) and their forward hooks are removed as well, so
    the state dict holds plain convolution weights only.

    Args:
        model: any module (a single DCLS layer too).
        inplace: modify ``model`` itself instead of a deep copy.
    """
    if isinstance(model, _DclsNd):
        return to_conv(model)
    model = model if inplace else copy.deepcopy(model)
    layers = [(path, module) for path, module in model.named_modules() if isinstance(module, _DclsNd)]
    for path, layer in layers:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, to_conv(layer))
    for owner in list(model.modules()):
        shared = getattr(owner, "dcls_shared", None)
        if isinstance(shared, nn.ModuleDict) and all(isinstance(m, SharedPositions) for m in shared.values()):
            for positions in shared.values():
                positions.detach_from(owner)
            del owner.dcls_shared
    return model
