"""dcls-zoo: Dilated Convolution with Learnable Spacings, layers to model zoo.

The public face (``dcls_zoo.<name>``), by use:

- **layers**: :class:`Dcls1d`, :class:`Dcls2d`, :class:`Dcls3d` (base :class:`DclsConvNd`) and
  their functional op :func:`dcls_conv` / :func:`dcls_kernel`;
- **models**: :func:`create_model`, :func:`list_models` (registered in timm on import),
  :func:`dclsify` (any model's convolutions to DCLS) and its :class:`DclsifyReport`;
- **positions**: :func:`clamp_model_positions_` (after every optimizer step),
  :func:`position_owners`, :func:`position_parameters`, :func:`dcls_layers`;
- **inference**: :func:`fuse` (DCLS layers to plain convolutions); backends
  :func:`use_backend` / :func:`set_backend`, :func:`use_autotune` / :func:`set_autotune`;
- **weights out and in**: :func:`save_pretrained`, :func:`push_to_hub`,
  :func:`convert_official_checkpoint` (the authors' files);
- **errors**: :class:`DclsZooError`, the root of every error dcls-zoo defines;
- ``__version__``.

Everything else lives in its room and is imported from there: the kernel construction
(:mod:`dcls_zoo.construct`), shared positions (:mod:`dcls_zoo.shared`), the export format
(:mod:`dcls_zoo.export_format`), state-dict hygiene (:mod:`dcls_zoo.state_dicts`), weights in
(:mod:`dcls_zoo.weights`), weights out (:mod:`dcls_zoo.hub`), the specific errors
(:mod:`dcls_zoo.errors`), the model families (:mod:`dcls_zoo.models`).
"""

from .autotune import set_autotune, use_autotune
from .backends import set_backend, use_backend
from .errors import DclsZooError
from .functional import dcls_conv, dcls_kernel
from .fuse import fuse
from .hub import push_to_hub, save_pretrained
from .layers import Dcls1d, Dcls2d, Dcls3d, DclsConvNd
from .models import DclsifyReport, create_model, dclsify, list_models
from .positions import clamp_model_positions_, dcls_layers, position_owners, position_parameters
from .version import __version__
from .weights.official import convert_official_checkpoint

__all__ = [
    "Dcls1d",
    "Dcls2d",
    "Dcls3d",
    "DclsConvNd",
    "DclsZooError",
    "DclsifyReport",
    "__version__",
    "clamp_model_positions_",
    "convert_official_checkpoint",
    "create_model",
    "dcls_conv",
    "dcls_kernel",
    "dcls_layers",
    "dclsify",
    "fuse",
    "list_models",
    "position_owners",
    "position_parameters",
    "push_to_hub",
    "save_pretrained",
    "set_autotune",
    "set_backend",
    "use_autotune",
    "use_backend",
]
