"""The pretrained-weights API under its first import path (``dcls_zoo.pretrained``).

Nothing is implemented here: the weights table is :mod:`dcls_zoo.weights.table`, fetching
:mod:`dcls_zoo.weights.fetch`, building a model with weights :mod:`dcls_zoo.weights.build`.
"""

from .state_dicts import sha256_file
from .weights.build import (
    ZENODO_URL_ENV,
    WeightsFile,
    build_model_with_weights,
    fetch_pretrained,
    load_pretrained_state_dict,
)
from .weights.fetch import ChecksumMismatchError, PretrainedWeightsError
from .weights.table import (
    DEFAULT_FILENAME,
    PRETRAINED_WEIGHTS,
    PretrainedWeights,
    check_table,
    describe_weights,
    get_pretrained_weights,
    hub_id_at_revision,
)

__all__ = [
    "ZENODO_URL_ENV",
    "DEFAULT_FILENAME",
    "PRETRAINED_WEIGHTS",
    "PretrainedWeights",
    "PretrainedWeightsError",
    "ChecksumMismatchError",
    "WeightsFile",
    "build_model_with_weights",
    "check_table",
    "describe_weights",
    "fetch_pretrained",
    "get_pretrained_weights",
    "hub_id_at_revision",
    "load_pretrained_state_dict",
    "sha256_file",
]
