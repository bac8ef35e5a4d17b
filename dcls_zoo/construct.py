"""Kernel construction for DCLS: weights + real-valued positions -> dense convolution kernel.

Every interpolation DCLS uses (bilinear, triangle with a learnable width, Gaussian with a
learnable sigma) has a footprint that is a product of one-dimensional footprints, one per kernel
axis, and so is its normalisation over the window. The dense kernel is therefore

    K[b, u_0, ..., u_{d-1}] = sum_k w[b, k] * A_0[b, k, u_0] * ... * A_{d-1}[b, k, u_{d-1}]

where ``A_i[b, k, :]`` is element ``k``'s normalised footprint along axis ``i`` (a vector of the
axis' window size). In 2D this is ``K[b] = A_0[b]^T diag(w[b]) A_1[b]``: one batched matmul,
with intermediates of size ``B * K * s`` instead of the ``B * K * s^d`` (times ``d``) tensors
the official implementation materialises.

Conventions (unlike the official 2D v1/triangle/gauss code, which stores the width first):
``positions[i]`` is the offset along kernel axis ``i`` in PyTorch's order (2D: ``positions[0]``
is the row / height, ``positions[1]`` the column / width), centred on the window, so the
footprint of a position ``p`` along an axis of size ``s`` is centred on index ``p + s // 2``.

The functions here are pure: they hold no state, never check module arguments and work for any
batch shape, so models can share positions across layers and build the factors once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Interpolation",
    "INTERPOLATIONS",
    "resolve_interpolation",
    "axis_footprints",
    "kernel_from_footprints",
    "construct_kernel",
    "position_bounds",
    "clamp_positions_",
]

# Added to each axis' normaliser so that an element whose footprint lies entirely outside the
# window (possible only for unclamped positions) yields zeros instead of NaN. The official code
# adds the same constant to the (product) normaliser over the whole window.
_NORM_EPS = 1e-7


def _bilinear(distance: Tensor, sigma: Tensor | None) -> Tensor:
    return torch.relu(1.0 - distance.abs())


def _triangle(distance: Tensor, sigma: Tensor) -> Tensor:
    return torch.relu(sigma - distance.abs())


def _gauss(distance: Tensor, sigma: Tensor) -> Tensor:
    return torch.exp(-0.5 * (distance / sigma).square())


@dataclass(frozen=True)
class Interpolation:
    """One interpolation scheme: its 1D footprint and how its learnable width is parametrised.

    Attributes:
        name: canonical name (``"bilinear"``, ``"triangle"``, ``"gauss"``).
        footprint: ``f(distance, width) -> weights``, elementwise; ``width`` is ``None`` for
            schemes without a learnable width.
        sigma_offset: the effective width is ``|SIG| + sigma_offset`` (``None``: no ``SIG``).
        sigma_init: the value ``SIG`` is initialised to (effective initial width
            ``sigma_init + sigma_offset``).
    """

    name: str
    footprint: Callable[[Tensor, Tensor | None], Tensor]
    sigma_offset: float | None = None
    sigma_init: float = 0.0

    @property
    def has_sigma(self) -> bool:
        return self.sigma_offset is not None


# Registry of interpolations. Aliases map the official package's version names onto ours:
# "v0" and "v1" are both bilinear (they differ in the official code only in axis order and in
# that v0 does not renormalise, which changes nothing for positions inside the window);
# "max" is the official name of the triangle.
INTERPOLATIONS: dict[str, Interpolation] = {
    "bilinear": Interpolation("bilinear", _bilinear),
    "triangle": Interpolation("triangle", _triangle, sigma_offset=1.0, sigma_init=0.0),
    "gauss": Interpolation("gauss", _gauss, sigma_offset=0.27, sigma_init=0.23),
}
_ALIASES = {"v0": "bilinear", "v1": "bilinear", "max": "triangle"}


def resolve_interpolation(version: str | Interpolation) -> Interpolation:
    """Return the :class:`Interpolation` named ``version`` (canonical name or official alias)."""
    if isinstance(version, Interpolation):
        return version
    if not isinstance(version, str):
        raise TypeError(f"version must be a string, got {type(version).__name__}")
    name = _ALIASES.get(version, version)
    if name not in INTERPOLATIONS:
        known = sorted([*INTERPOLATIONS, *_ALIASES])
        raise ValueError(f"unknown version {version!r}; expected one of {known}")
    return INTERPOLATIONS[name]


def position_bounds(window: int) -> tuple[int, int]:
    """Range ``[low, high]`` of centred positions whose footprint centre lies in the window.

    For an axis of size ``window`` the centred position ``p`` maps to index ``p + window // 2``,
    so the bounds are ``(-(window // 2), window - 1 - window // 2)``. For odd sizes this is the
    official ``±(window // 2)``; for even sizes the official upper bound lies one past the window.
    """
    centre = window // 2
    return -centre, window - 1 - centre


@torch.no_grad()
def clamp_positions_(positions: Tensor, dilated_kernel_size: Sequence[int]) -> Tensor:
    """Clamp ``positions`` ``(d, ...)`` in place to :func:`position_bounds` per axis; returns it."""
    if positions.shape[0] != len(dilated_kernel_size):
        raise ValueError(
            f"positions have {positions.shape[0]} axes, dilated_kernel_size has {len(dilated_kernel_size)}"
        )
    for axis, window in enumerate(dilated_kernel_size):
        positions[axis].clamp_(*position_bounds(window))
    return positions


def axis_footprints(
    positions: Tensor,
    sigmas: Tensor | None,
    dilated_kernel_size: Sequence[int],
    version: str | Interpolation = "gauss",
) -> list[Tensor]:
    """Normalised per-axis footprints of every kernel element.

    Args:
        positions: ``(d, *batch, K)`` centred positions, ``positions[i]`` along kernel axis ``i``.
        sigmas: ``(d, *batch, K)`` raw width parameters ``SIG`` for triangle/gauss
            (effective width ``|SIG| + offset``), ``None`` for bilinear.
        dilated_kernel_size: the window size along each of the ``d`` axes.
        version: interpolation name or :class:`Interpolation`.

    Returns:
        ``d`` tensors; tensor ``i`` has shape ``(*batch, K, dilated_kernel_size[i])`` and sums
        to one along its last dimension (for elements whose footprint touches the window).
    """
    interpolation = resolve_interpolation(version)
    if interpolation.has_sigma and sigmas is None:
        raise ValueError(f"interpolation {interpolation.name!r} needs sigmas, got None")
    factors = []
    for axis, window in enumerate(dilated_kernel_size):
        grid = torch.arange(window, dtype=positions.dtype, device=positions.device)
        # distance from every grid index to every element centre: (*batch, K, window)
        distance = grid - (positions[axis] + window // 2).unsqueeze(-1)
        width = None
        if interpolation.has_sigma:
            width = (sigmas[axis].abs() + interpolation.sigma_offset).unsqueeze(-1)
        footprint = interpolation.footprint(distance, width)
        factors.append(footprint / (footprint.sum(-1, keepdim=True) + _NORM_EPS))
    return factors


def kernel_from_footprints(weight: Tensor, footprints: Sequence[Tensor]) -> Tensor:
    """Dense kernel ``sum_k weight[..., k] * prod_i footprints[i][..., k, u_i]``.

    Args:
        weight: ``(*batch, K)`` element weights.
        footprints: ``d`` tensors of shape ``(*batch, K, s_i)`` from :func:`axis_footprints`;
            their batch dimensions broadcast against ``weight``'s (shared positions may have
            size-1 batch dimensions where the weight has many).

    Returns:
        ``(*batch, s_0, ..., s_{d-1})``.

    The first ``d - 1`` factors are combined with the weights by broadcasting (size
    ``B * K * s_0 * ... * s_{d-2}``), the last one by a batched matmul over ``K``.
    """
    if not footprints:
        raise ValueError("footprints must hold at least one axis")
    *leading, last = footprints
    batch_shape = torch.broadcast_shapes(weight.shape[:-1], *(f.shape[:-2] for f in footprints))
    count = weight.shape[-1]
    # left: (*batch, K, s_0 * ... * s_{d-2}), the weighted outer product of the leading factors
    left = weight.unsqueeze(-1)
    for factor in leading:
        left = (left.unsqueeze(-1) * factor.unsqueeze(-2)).flatten(-2)
    left = left.expand(*batch_shape, count, left.shape[-1]).reshape(-1, count, left.shape[-1])
    right = last.expand(*batch_shape, *last.shape[-2:]).reshape(-1, count, last.shape[-1])
    kernel = torch.bmm(left.transpose(1, 2), right)
    window = [f.shape[-1] for f in footprints]
    return kernel.reshape(*batch_shape, *window)


def construct_kernel(
    weight: Tensor,
    positions: Tensor,
    sigmas: Tensor | None,
    dilated_kernel_size: Sequence[int],
    version: str | Interpolation = "gauss",
) -> Tensor:
    """Build the dense DCLS kernel from weights, positions and (optionally) widths.

    Args:
        weight: ``(*batch, K)``; for a convolution ``(C_out, C_in / groups, K)``.
        positions: ``(d, *batch, K)``, centred, ``positions[i]`` along kernel axis ``i``.
        sigmas: ``(d, *batch, K)`` for triangle/gauss, ``None`` for bilinear.
        dilated_kernel_size: ``d`` window sizes.
        version: ``"bilinear"`` (``"v0"``, ``"v1"``), ``"triangle"`` (``"max"``) or ``"gauss"``.

    Returns:
        ``(*batch, *dilated_kernel_size)``, differentiable in all three inputs.
    """
    footprints = axis_footprints(positions, sigmas, dilated_kernel_size, version)
    return kernel_from_footprints(weight, footprints)
