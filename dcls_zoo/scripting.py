"""What TorchScript calls when it runs a scripted DCLS layer.

A scripted layer's forward calls :func:`dcls_conv_scripted`, which TorchScript leaves to Python
(``torch.jit.ignore``): the kernel construction and the backends are Python. Scripted models
therefore run, as timm's model tests and FX/TorchScript users expect, but cannot be saved with
``torch.jit.save``; for deployment call :func:`dcls_zoo.fuse` first (plain convolutions).

This module has no ``from __future__ import annotations``: TorchScript reads the signature's
annotations as types, not strings.
"""

from typing import List, Optional

import torch
from torch import Tensor

from .functional import convolve_with_geometry, dcls_geometry

__all__ = ["dcls_conv_scripted"]


@torch.jit.ignore
def dcls_conv_scripted(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    bias: Optional[Tensor],
    dilated_kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    groups: int,
    padding_mode: str,
    version: str,
    learned_axes: List[int],
    backend: str,
) -> Tensor:
    """:func:`~dcls_zoo.functional.dcls_conv` with TorchScript-typed arguments; ``padding`` is
    the flat list of ``(before, after)`` pairs, one pair per axis."""
    pairs = tuple((padding[2 * i], padding[2 * i + 1]) for i in range(len(padding) // 2))
    geometry = dcls_geometry(len(dilated_kernel_size), dilated_kernel_size, stride, 0, groups, padding_mode,
                             version, learned_axes)._replace(padding=pairs)
    return convolve_with_geometry(input, weight, P, SIG, bias, geometry, backend, None, None)
