"""``create_model`` / ``list_models``: timm's factory, restricted to names that exist, with hints."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from ..names import SOURCE_PREFIXES, check_model_name, list_models
from ..weights.exports import create_from_source
from ..weights.table import get_pretrained_weights, hub_id_at_revision

__all__ = ["create_model", "list_models"]


def create_model(name: str, pretrained: bool | str = False, *, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model by name through ``timm.create_model``.

    Args:
        name: a registered architecture (``"convnext_dcls_tiny"``), optionally with a pretrained tag
            (``"convnext_dcls_tiny.in1k"``), or a source (``"hf-hub:org/repo[@revision]"``,
            ``"local-dir:/path"``): its ``config.json`` is read and the sha256 that
            ``save_pretrained`` recorded for the weights are verified before timm builds it.
        pretrained: ``True`` loads the default tag's weights; a string names the tag
            (``create_model("convnext_dcls_tiny", pretrained="in1k")``). Weights come from the model's
            Hugging Face Hub repo, else the authors' file (see :mod:`dcls_zoo.weights.pretrained`).
        revision: load the weights from this revision (branch, tag or commit) of the model's Hub repo
            only (no fallback); needs ``pretrained``.
        **kwargs: model arguments (``num_classes``, ``drop_path_rate``, ``features_only``, ...).

    Raises:
        ValueError: unknown ``name``, listing the closest registered names.
        dcls_zoo.errors.PretrainedWeightsError: weights that cannot be found or fetched, or
            fail their checksum (``HubUnreachableError`` without a Hub or cached copy).
        dcls_zoo.errors.WeightsFileError: a truncated or garbled export file (naming it).
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    source = name.startswith(SOURCE_PREFIXES)
    if not source:
        check_model_name(name)
    if isinstance(pretrained, str):
        if "." in name or source:
            raise ValueError(f"give the pretrained tag once: {name!r} already names a source, pretrained={pretrained!r}")
        name, pretrained = f"{name}.{pretrained}", True
    explicit = kwargs.get("pretrained_cfg") or kwargs.get("pretrained_cfg_overlay")
    if pretrained and not source and not explicit and name.split(".", 1)[0] in list_models():
        get_pretrained_weights(name)  # a zoo model or tag without weights in the table: say which have them
    if revision is not None:
        if not pretrained:
            raise ValueError(f"revision={revision!r} selects pretrained weights: pass pretrained=True as well")
        if source:
            raise ValueError(f"give the revision in the name ('hf-hub:org/repo@{revision}'), not as revision=")
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["hf_hub_id"] = hub_id_at_revision(name, revision)
        kwargs["pretrained_cfg_overlay"] = overlay
    if source:
        return create_from_source(name, pretrained=bool(pretrained), **kwargs)
    return timm.create_model(name, pretrained=pretrained, **kwargs)
