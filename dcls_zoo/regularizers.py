"""Training regularisers on DCLS positions.

The repulsive loss of the ConvNeXt-dcls training code keeps the elements of a kernel from
collapsing onto each other: every pair of elements of one kernel closer than ``threshold``
pixels is penalised by how much closer it is,

    L_layer = 2 / (K (K - 1) N) * sum_n sum_{i<j} max(0, threshold - ||p_ni - p_nj||)

over the ``N = C_out * C_in/groups`` kernels of ``K`` elements of a position tensor, and
``L_rep`` is the mean of ``L_layer`` over the model's distinct position tensors (a tensor shared
by a stage counts once). The authors add ``L_rep ** 2`` to the classification loss.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .positions import position_owners

__all__ = ["repulsive_loss", "repulsive_loss_of"]


def repulsive_loss_of(positions: Tensor, threshold: float = 1.0) -> Tensor:
    """The repulsive loss of one position tensor.

    Args:
        positions: ``(d, C_out, C_in/groups, K)``, element ``k`` of kernel ``(o, i)`` sits at
            ``positions[:, o, i, k]`` (any number ``d`` of learned axes).
        threshold: pairs closer than this (in pixels) are penalised.

    Returns:
        A scalar: the mean over kernels and element pairs of ``max(0, threshold - distance)``;
        0 for kernels of a single element.
    """
    if positions.dim() != 4:
        raise ValueError(f"positions must be (d, C_out, C_in/groups, K), got shape {tuple(positions.shape)}")
    count = positions.shape[-1]
    if count < 2:
        return positions.new_zeros(())
    points = positions.flatten(1, 2).permute(1, 2, 0)  # (N, K, d)
    # cdist's gradient at distance 0 is 0 (not NaN), so coincident elements are safe.
    distances = torch.cdist(points, points)
    pair = torch.ones(count, count, dtype=torch.bool, device=positions.device).triu(1)
    hinge = torch.relu(threshold - distances[:, pair])  # (N, K(K-1)/2)
    return hinge.mean()


def repulsive_loss(model_or_positions: nn.Module | Iterable[Tensor], threshold: float = 1.0) -> Tensor:
    """Mean repulsive loss over the distinct position tensors of a model (or of the given tensors).

    Returns a scalar tensor (0 when there are no positions, e.g. a plain ConvNeXt).
    """
    if isinstance(model_or_positions, nn.Module):
        tensors = [holder.owner.P for holder in position_owners(model_or_positions)]
    else:
        tensors = list(model_or_positions)
    if not tensors:
        return torch.zeros(())
    return torch.stack([repulsive_loss_of(p, threshold) for p in tensors]).mean()
