"""dcls-zoo: Dilated Convolution with Learnable Spacings, layers to model zoo.

Public API (see the README): the layers :class:`Dcls1d`, :class:`Dcls2d`, :class:`Dcls3d` (base
:class:`DclsConvNd`) and their functional op :func:`dcls_conv` (:mod:`dcls_zoo.functional`), the
kernel construction in :mod:`dcls_zoo.construct`, the positions service
(:mod:`dcls_zoo.positions`), the authors' checkpoints (:func:`convert_official_checkpoint`), and
the model zoo (registered in
timm on import): :func:`create_model`, :func:`list_models`, :func:`dclsify`; Hub export and
upload (:mod:`dcls_zoo.hub`): :func:`save_pretrained`, :func:`push_to_hub`. Weights in live in
:mod:`dcls_zoo.weights` (table, fetch, build, the authors' format), state-dict hygiene in
:mod:`dcls_zoo.state_dicts`.
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
from .autotune import set_autotune, use_autotune
from .backends import set_backend, use_backend
from .weights.official import convert_official_checkpoint
from .functional import dcls_conv, dcls_kernel
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
from .layers import Dcls1d, Dcls2d, Dcls3d, DclsConvNd
from .models import ConvMixerDcls, ConvNeXtDcls, DclsifyReport, create_model, dclsify, list_models
from .positions import (
    clamp_model_positions_,
    dcls_layers,
    position_owners,
    position_parameters,
    spread_model_positions_,
)
from .shared import SharedPositions, SharedPositionsDict

from .version import __version__

__all__ = [
    "convert_official_checkpoint",
    "dcls_conv",
    "dcls_kernel",
    "DclsConvNd",
    "SharedPositionsDict",
    "position_owners",
    "position_parameters",
    "fuse",
    "set_autotune",
    "set_backend",
    "to_conv",
    "use_autotune",
    "use_backend",
    "HubUnreachableError",
    "PushError",
    "PushResult",
    "hub_download_errors",
    "push_to_hub",
    "save_pretrained",
    "upload_export",
    "ConvMixerDcls",
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
