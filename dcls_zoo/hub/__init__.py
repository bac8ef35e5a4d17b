"""Weights out: export a model to a Hugging Face Hub folder, write its model card, push it.

Rooms: :mod:`.card` (DCLS settings, the card text), :mod:`.export` (:func:`save_pretrained`),
:mod:`.push` (:func:`upload_export`, :func:`push_to_hub`). The files an export holds and how they
are checked: :mod:`dcls_zoo.export_format`. Loading an export back is
:func:`dcls_zoo.create_model` (``local-dir:`` / ``hf-hub:``), through :mod:`dcls_zoo.weights.exports`.
"""

from .card import CITATION, dcls_settings
from .export import architecture_of, save_pretrained
from .push import PushResult, check_export, push_to_hub, require_token, upload_export

__all__ = [
    "CITATION",
    "PushResult",
    "architecture_of",
    "check_export",
    "dcls_settings",
    "push_to_hub",
    "require_token",
    "save_pretrained",
    "upload_export",
]
