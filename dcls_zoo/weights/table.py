"""The weights table: the one file a maintainer edits to publish pretrained weights.

:data:`PRETRAINED_WEIGHTS` maps a pretrained tag (``"convnext_dcls_tiny.in1k"``) to a
:class:`PretrainedWeights` row: the Hugging Face Hub repo, file and revision of our safetensors
file, its sha256, and a fallback (the authors' released file, converted on load) with its own
sha256. To publish a model: push its export (``dcls-zoo push``), then fill in ``sha256`` (and
``revision``, to pin it) in its row. How rows are used: :mod:`dcls_zoo.weights.pretrained`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import timm

from ..errors import PretrainedWeightsError
from ..export_format import WEIGHTS_NAME
from ..names import check_model_name

__all__ = [
    "DEFAULT_FILENAME",
    "PRETRAINED_WEIGHTS",
    "PretrainedWeights",
    "check_table",
    "describe_weights",
    "get_pretrained_weights",
    "hub_id_at_revision",
]

#: The file our Hub repos hold (safetensors only).
DEFAULT_FILENAME = WEIGHTS_NAME
_HUB_ORG = "dcls-zoo"
_ZENODO_BILINEAR = "https://zenodo.org/record/7112021/files/"
_ZENODO_GAUSS = "https://zenodo.org/record/8029747/files/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PretrainedWeights:
    """One row of :data:`PRETRAINED_WEIGHTS`: where one pretrained tag's weights live.

    Attributes:
        hf_hub_id: the Hub model repo holding our safetensors file (``"dcls-zoo/<arch>.<tag>"``).
        filename: the weights file in that repo (safetensors).
        revision: the Hub revision (branch, tag or commit) the file is pinned to; ``None`` is
            ``"main"``.
        sha256: the file's sha256 at that revision, enforced when given; ``None`` until the repo is
            published.
        fallback_url: the authors' released file (a torch pickle in their layout), used when the Hub
            repo or file does not exist; converted on load. ``None``: no fallback.
        fallback_sha256: the fallback file's sha256, enforced when given.
    """

    hf_hub_id: str
    filename: str = DEFAULT_FILENAME
    revision: str | None = None
    sha256: str | None = None
    fallback_url: str | None = None
    fallback_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.hf_hub_id.count("/") != 1 or "@" in self.hf_hub_id:
            raise ValueError(f"hf_hub_id must be 'org/name' (no revision), got {self.hf_hub_id!r}")
        if not self.filename.endswith(".safetensors"):
            raise ValueError(f"Hub weights are safetensors only, got filename {self.filename!r}")
        for name in ("sha256", "fallback_sha256"):
            value = getattr(self, name)
            if value is not None and not _SHA256.match(value):
                raise ValueError(f"{name} must be 64 lowercase hex digits or None, got {value!r}")

    @property
    def published(self) -> bool:
        """Whether the Hub file is published (its checksum is known)."""
        return self.sha256 is not None


def _planned(arch_tag: str, fallback_url: str | None = None) -> PretrainedWeights:
    return PretrainedWeights(hf_hub_id=f"{_HUB_ORG}/{arch_tag}", fallback_url=fallback_url)


#: Pretrained tag -> where its weights live. The Hub repos are planned names (not published yet,
#: sha256 None); the fallbacks are the authors' EMA files (Zenodo 7112021: bilinear, H-first
#: positions; 8029747: Gaussian, W-first), whose checksums were never published either.
#: ResNet-50-dcls has no row: its checkpoints' file names in Zenodo 8373830 are unverified.
PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = {
    "convnext_dcls_tiny.in1k": _planned("convnext_dcls_tiny.in1k", _ZENODO_BILINEAR + "convnext_dcls_tiny_1k_224_ema.pth"),
    "convnext_dcls_small.in1k": _planned("convnext_dcls_small.in1k", _ZENODO_BILINEAR + "convnext_dcls_small_1k_224_ema.pth"),
    "convnext_dcls_base.in1k": _planned("convnext_dcls_base.in1k", _ZENODO_BILINEAR + "convnext_dcls_base_1k_224_ema.pth"),
    "convnext_dcls_gauss_tiny.in1k": _planned(
        "convnext_dcls_gauss_tiny.in1k", _ZENODO_GAUSS + "convnext_dcls_gauss_tiny_1k_224_ema.pth"
    ),
}


def _available() -> str:
    return ", ".join(sorted(PRETRAINED_WEIGHTS)) or "none"


def get_pretrained_weights(name: str) -> tuple[str, PretrainedWeights]:
    """The table row of ``name`` (``"arch"`` for its default tag, or ``"arch.tag"``).

    Returns:
        ``("arch.tag", row)``.

    Raises:
        ValueError: the architecture is not registered (naming it, with close matches).
        PretrainedWeightsError: a known model or tag without weights (listing those with weights).
    """
    arch, _, tag = name.partition(".")
    check_model_name(arch, "architecture", "pretrained weights name")
    if not tag:
        tag = timm.models.get_pretrained_cfg(arch).tag or ""
    key = f"{arch}.{tag}" if tag else arch
    if key not in PRETRAINED_WEIGHTS:
        raise PretrainedWeightsError(f"No pretrained weights exist for {key}; weights exist for: {_available()}")
    return key, PRETRAINED_WEIGHTS[key]


def hub_id_at_revision(name: str, revision: str) -> str:
    """``"org/repo@revision"`` for ``name``'s Hub repo: the ``hf_hub_id`` overlay that pins a revision."""
    if not revision or "@" in revision:
        raise ValueError(f"revision must be a branch, tag or commit, got {revision!r}")
    return f"{get_pretrained_weights(name)[1].hf_hub_id}@{revision}"


def describe_weights(name: str) -> str:
    """One paragraph on where ``name``'s pretrained weights come from (for docstrings and help)."""
    tags = sorted(key for key in PRETRAINED_WEIGHTS if key.split(".", 1)[0] == name)
    if not tags:
        return "No pretrained weights: pretrained=True raises."
    lines = []
    default = timm.models.get_pretrained_cfg(name).tag
    for key in tags:
        row = PRETRAINED_WEIGHTS[key]
        tag = key.split(".", 1)[1]
        hub = f"Hugging Face Hub {row.hf_hub_id} ({row.filename}"
        hub += f", revision {row.revision}" if row.revision else ""
        hub += ", sha256-checked)" if row.published else ", not published yet)"
        line = f"'{tag}'{' (default)' if tag == default else ''}: {hub}"
        if row.fallback_url:
            line += f"; falls back to the authors' file {row.fallback_url}, converted on load"
        lines.append(line + ".")
    return " ".join(lines)


def check_table(table: Mapping[str, PretrainedWeights] = PRETRAINED_WEIGHTS) -> None:
    """Every row names a registered architecture (raises ValueError naming the first that does not)."""
    for key in table:
        check_model_name(key.split(".", 1)[0], "architecture", f"pretrained weights table (row {key!r})")
