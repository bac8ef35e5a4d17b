"""dcls-zoo: Dilated Convolution with Learnable Spacings, layers to model zoo.

Public API (see the README): the layers :class:`Dcls1d`, :class:`Dcls2d`, :class:`Dcls3d` and the
functional kernel construction in :mod:`dcls_zoo.construct`.
"""

from .construct import (
    INTERPOLATIONS,
    Interpolation,
    axis_footprints,
    clamp_positions_,
    construct_kernel,
    kernel_from_footprints,
    position_bounds,
)
from .layers import Dcls1d, Dcls2d, Dcls3d

__version__ = "0.1.0"

__all__ = [
    "Dcls1d",
    "Dcls2d",
    "Dcls3d",
    "INTERPOLATIONS",
    "Interpolation",
    "axis_footprints",
    "clamp_positions_",
    "construct_kernel",
    "kernel_from_footprints",
    "position_bounds",
]
