"""dcls-zoo: Dilated Convolution with Learnable Spacings, layers to model zoo.

Public API (see the README): the layers :class:`Dcls1d`, :class:`Dcls2d`, :class:`Dcls3d`, the
functional kernel construction in :mod:`dcls_zoo.construct`, and the model zoo (registered in
timm on import): :func:`create_model`, :func:`list_models`, :func:`dclsify`; Hub export and
upload (:mod:`dcls_zoo.hub`): :func:`save_pretrained`, :func:`push_to_hub`.
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
from .backends import set_backend, use_backend
from .fuse import fuse, to_conv
from .hub import (
    HubUnreachableError,
    PushError,
    PushResult,
    hub_download_errors,
    push_to_hub,
    save_pretrained,
    upload_export,
)
from .layers import Dcls1d, Dcls2d, Dcls3d
from .models import (
    ConvNeXtDcls,
    DclsifyReport,
    clamp_model_positions_,
    create_model,
    dcls_layers,
    dclsify,
    list_models,
    spread_model_positions_,
)
from .shared import SharedPositions

__version__ = "0.1.0"

__all__ = [
    "fuse",
    "set_backend",
    "to_conv",
    "use_backend",
    "HubUnreachableError",
    "PushError",
    "PushResult",
    "hub_download_errors",
    "push_to_hub",
    "save_pretrained",
    "upload_export",
    "ConvNeXtDcls",
    "DclsifyReport",
    "SharedPositions",
    "clamp_model_positions_",
    "create_model",
    "dcls_layers",
    "dclsify",
    "list_models",
    "spread_model_positions_",
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
