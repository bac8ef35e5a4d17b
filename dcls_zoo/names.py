"""Model names: which models dcls-zoo registers, and the one error for a name that does not exist."""

from __future__ import annotations

import difflib

import timm

__all__ = ["SOURCE_PREFIXES", "ZOO_MODULES", "check_model_name", "list_models"]

# timm groups registered models by the last component of their module's name.
ZOO_MODULES = ("convnext_dcls", "resnet_dcls", "convmixer_dcls")
#: Model names that name a source of weights and config instead of an architecture.
SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the models dcls-zoo registers (``fnmatch`` ``pattern``; with weights only if ``pretrained``)."""
    return timm.list_models(pattern, module=list(ZOO_MODULES), pretrained=pretrained)


def check_model_name(name: str, kind: str = "model", where: str | None = None) -> None:
    """Raise ``ValueError`` unless ``name`` (``"arch"`` or ``"arch.tag"``) is a registered architecture.

    The message (``"unknown <kind> '<name>' in the <where>"``) lists the closest registered names (dcls-zoo's
    and timm's), or dcls-zoo's models when nothing is close.
    """
    architecture = name.split(".", 1)[0]
    if timm.is_model(architecture):
        return
    zoo = list_models()
    candidates = list(dict.fromkeys(zoo + timm.list_models()))
    close = difflib.get_close_matches(architecture, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; dcls-zoo models: {', '.join(zoo)}"
    place = f" in the {where}" if where else ""
    raise ValueError(f"unknown {kind} {name!r}{place}{hint}")
