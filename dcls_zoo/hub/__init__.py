"""Weights out: export a model to a Hugging Face Hub folder, write its model card, push it.

Rooms: :mod:`.card` (DCLS settings, the positions picture, the card text), :mod:`.export`
(:func:`save_pretrained`), :mod:`.push` (:func:`upload_export`, :func:`push_to_hub`). Loading an
export back is :func:`dcls_zoo.create_model` (``local-dir:`` / ``hf-hub:``), through
:mod:`dcls_zoo.weights.build`, which verifies the sha256 the export records.
"""

from ..state_dicts import CONFIG_NAME, WEIGHTS_NAME
from ..weights.fetch import HubUnreachableError, hub_download_errors
from .card import CARD_NAME, CITATION, POSITIONS_NAME, dcls_settings, save_positions_figure
from .export import PICKLE_SUFFIXES, save_pretrained
from .push import PushError, PushResult, check_export, push_to_hub, require_token, upload_export

__all__ = [
    "CARD_NAME",
    "CITATION",
    "CONFIG_NAME",
    "PICKLE_SUFFIXES",
    "POSITIONS_NAME",
    "WEIGHTS_NAME",
    "HubUnreachableError",
    "PushError",
    "PushResult",
    "check_export",
    "dcls_settings",
    "hub_download_errors",
    "push_to_hub",
    "require_token",
    "save_positions_figure",
    "save_pretrained",
    "upload_export",
]
