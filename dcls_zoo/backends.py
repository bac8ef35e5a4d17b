"""Convolution with an already-built dense kernel.

The DCLS layers hand their dense kernel to :func:`convolve`. Padding arrives resolved as one
``(before, after)`` pair per spatial axis, which covers integer, ``"same"`` (also for even
windows, where the two sides differ) and ``"valid"`` padding alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["convolve", "PADDING_MODES"]

_CONV_BY_DIMS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# nn.ConvNd's padding modes; "zeros" is applied by the convolution itself when symmetric.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def convolve(
    input: Tensor,
    kernel: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[tuple[int, int]],
    groups: int,
    padding_mode: str = "zeros",
) -> Tensor:
    """Cross-correlate ``input`` with a dense ``kernel`` (as ``nn.ConvNd`` does).

    Args:
        input: ``(N, C_in, *spatial)`` with ``d = len(stride)`` spatial dimensions.
        kernel: ``(C_out, C_in / groups, *window)``.
        bias: ``(C_out,)`` or ``None``.
        stride: ``d`` strides.
        padding: ``d`` pairs ``(before, after)`` of padding, in axis order.
        groups: number of channel groups.
        padding_mode: one of :data:`PADDING_MODES`.

    Returns:
        ``(N, C_out, *spatial_out)``.
    """
    conv = _CONV_BY_DIMS[len(stride)]
    symmetric = all(before == after for before, after in padding)
    if padding_mode == "zeros" and symmetric:
        return conv(input, kernel, bias, tuple(stride), tuple(p for p, _ in padding), 1, groups)
    # F.pad takes the last axis first.
    flat_padding = [amount for pair in reversed(padding) for amount in pair]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return conv(F.pad(input, flat_padding, mode=mode), kernel, bias, tuple(stride), 0, 1, groups)
