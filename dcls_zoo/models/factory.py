"""``create_model`` / ``list_models``: timm's factory, restricted to names that exist, with hints."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

__all__ = ["create_model", "list_models"]

# timm groups registered models by the last component of their module's name.
_ZOO_MODULES = ("convnext_dcls", "resnet_dcls")
_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the models dcls-zoo registers (``fnmatch`` ``pattern``; with weights only if ``pretrained``)."""
    return timm.list_models(pattern, module=list(_ZOO_MODULES), pretrained=pretrained)


def create_model(name: str, pretrained: bool | str = False, *, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model by name through ``timm.create_model``.

    Args:
        name: a registered architecture (``"convnext_dcls_tiny"``), optionally with a pretrained tag
            (``"convnext_dcls_tiny.in1k"``), or a source prefix timm understands (``"hf-hub:org/repo"``,
            ``"local-dir:/path"``).
        pretrained: ``True`` loads the default tag's weights; a string names the tag
            (``create_model("convnext_dcls_tiny", pretrained="in1k")``). Weights come from the model's
            Hugging Face Hub repo, else the authors' file (see :mod:`dcls_zoo.pretrained`).
        revision: load the weights from this revision (branch, tag or commit) of the model's Hub repo
            only (no fallback); needs ``pretrained``.
        **kwargs: model arguments (``num_classes``, ``drop_path_rate``, ``features_only``, ...).

    Raises:
        ValueError: unknown ``name``, listing the closest registered names.
        dcls_zoo.pretrained.PretrainedWeightsError: weights that cannot be found or fetched, or fail
            their checksum.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if not name.startswith(_SOURCE_PREFIXES):
        architecture = name.split(".", 1)[0]
        if not timm.is_model(architecture):
            candidates = list_models() + timm.list_models()
            close = difflib.get_close_matches(architecture, candidates, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; dcls-zoo models: {', '.join(list_models())}"
            raise ValueError(f"unknown model {name!r}{hint}")
    if isinstance(pretrained, str):
        if "." in name or name.startswith(_SOURCE_PREFIXES):
            raise ValueError(f"give the pretrained tag once: {name!r} already names a source, pretrained={pretrained!r}")
        name, pretrained = f"{name}.{pretrained}", True
    if revision is not None:
        if not pretrained:
            raise ValueError(f"revision={revision!r} selects pretrained weights: pass pretrained=True as well")
        if name.startswith(_SOURCE_PREFIXES):
            raise ValueError(f"give the revision in the name ('hf-hub:org/repo@{revision}'), not as revision=")
        from ..pretrained import hub_id_at_revision

        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["hf_hub_id"] = hub_id_at_revision(name, revision)
        kwargs["pretrained_cfg_overlay"] = overlay
    if name.startswith(("hf-hub:", "hf_hub:")):
        from ..hub import hub_download_errors  # the Hub client is imported only when a Hub name is used

        with hub_download_errors(name):
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    return timm.create_model(name, pretrained=pretrained, **kwargs)
