"""The authors' checkpoint converter under its first import path (``dcls_zoo.convert``).

Nothing is implemented here: see :mod:`dcls_zoo.weights.official` (the authors' format) and
:mod:`dcls_zoo.state_dicts` (safe loading, strict checks).
"""

from .state_dicts import CheckpointMismatchError, check_state_dict
from .weights.official import (
    AXIS_ORDER_OF_VERSION,
    OFFICIAL_VERSIONS,
    Conversion,
    convert_official,
    convert_official_checkpoint,
    is_converted,
    load_checkpoint_strict,
    load_official_file,
    official_checkpoint_filter,
    select_state_dict,
    source_axis_order,
)

__all__ = [
    "OFFICIAL_VERSIONS",
    "AXIS_ORDER_OF_VERSION",
    "CheckpointMismatchError",
    "Conversion",
    "convert_official",
    "convert_official_checkpoint",
    "official_checkpoint_filter",
    "load_checkpoint_strict",
    "check_state_dict",
    "load_official_file",
    "select_state_dict",
    "source_axis_order",
    "is_converted",
]
