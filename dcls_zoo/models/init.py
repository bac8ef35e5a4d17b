"""Initialising a built model again, e.g. after a meta-device build and ``to_empty``.

``timm.create_model(name, device="meta")`` builds a model without allocating its tensors;
``model.to_empty(device="cpu")`` gives them storage with undefined values. The model classes'
``init_weights()`` (:meth:`~dcls_zoo.models.convnext_dcls.ConvNeXtDcls.init_weights`,
:meth:`~dcls_zoo.models.resnet_dcls.ResNetDcls.init_weights`) then fill every parameter and
buffer as a fresh build does, from these pieces:

- :func:`reset_module_parameters`: each module's own constructor init (``reset_parameters``:
  norm weights 1 and biases 0, BatchNorm running statistics, PyTorch's default conv and linear
  init), which a model's own scheme then overrides where it has one;
- :func:`init_model_positions`: the DCLS positions and widths (``N(0, 0.5)`` clamped, or uniform
  over the window).
"""

from __future__ import annotations

import torch
from timm.layers.grn import GlobalResponseNorm
from torch import nn

from ..construct import init_positions_
from ..layers import DclsConvNd
from ..positions import position_owners, spread_model_positions_
from ..shared import SharedPositions

__all__ = ["init_model_positions", "reset_module_parameters"]

POSITION_INITS = ("normal", "uniform")


@torch.no_grad()
def reset_module_parameters(model: nn.Module) -> None:
    """Call ``reset_parameters()`` of every submodule of ``model`` that has one (each once).

    DCLS layers and position groups are left to the model's DCLS init (their
    ``reset_parameters`` draws weights the model's scheme replaces, and positions
    :func:`init_model_positions` draws). timm's ``GlobalResponseNorm`` has no
    ``reset_parameters``: it starts at zero (an identity), as its constructor sets it.
    """
    for module in model.modules():
        if module is model or isinstance(module, (DclsConvNd, SharedPositions)):
            continue
        if isinstance(module, GlobalResponseNorm):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()


@torch.no_grad()
def init_model_positions(model: nn.Module, position_init: str = "normal") -> None:
    """Initialise every position tensor of ``model`` (shared or a layer's own) in place.

    Args:
        model: any module with DCLS layers.
        position_init: ``"normal"``: the paper's ``P ~ N(0, 0.5)`` clamped into the window;
            ``"uniform"``: uniform over the window (:func:`~dcls_zoo.positions.spread_model_positions_`).
            Widths (``SIG``) start at their interpolation's initial value either way.
    """
    if position_init not in POSITION_INITS:
        raise ValueError(f"position_init must be one of {POSITION_INITS}, got {position_init!r}")
    for holder in position_owners(model):
        owner = holder.owner
        if isinstance(owner, SharedPositions):
            owner.reset_parameters()
        else:
            init_positions_(owner.P, owner.SIG, owner.learned_kernel_size, owner.interpolation)
    if position_init == "uniform":
        spread_model_positions_(model)
