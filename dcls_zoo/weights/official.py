"""Convert the authors' ConvNeXt-dcls checkpoints (Zenodo) into dcls-zoo's timm layout.

The official files (``K-H-Ismail/ConvNeXt-dcls``, Zenodo records 7112021 and 8029747) differ from
our models in three ways, and each needs its own fix:

1. **Key names.** They use facebook ConvNeXt names (``downsample_layers.*``, ``stages.{s}.{b}.*``,
   ``dwconv``, ``pwconv1``, ``norm.*``, ``head.*``); our models use timm's (``stem.*``,
   ``stages.{s}.blocks.{b}.*``, ``conv_dw``, ``mlp.fc1``, ``head.norm.*``, ``head.fc.*``).
2. **Shared positions.** The authors assign one ``nn.Parameter`` per stage to every block's
   ``dwconv.P`` (and ``.SIG``), so ``state_dict()`` repeats it under every block. Our models own it
   once per stage as ``stages.{s}.dcls_shared.conv_dw.P`` (see :mod:`dcls_zoo.shared`).
3. **Axis order of the positions.** Our ``P[0]`` is the row (H) position. The bilinear files were
   trained with the CUDA code / official ``version="v0"``, which is H-first like ours; the Gaussian
   file (official ``version="gauss"``) is W-first, so ``ours = official.flip(0)`` on ``P`` and ``SIG``.
   A wrong order loads without any error and silently transposes every kernel, so the order is
   taken from :data:`OFFICIAL_VERSIONS` (one row per released arch), never guessed silently.

Entry points:

- :func:`convert_official_checkpoint` (path or loaded object + arch -> our state dict),
- :func:`official_checkpoint_filter` (timm's ``pretrained_filter_fn``: ``pretrained=True`` with the
  Zenodo URL converts on the fly; idempotent),
- :func:`load_official_file` (the safe reader: :func:`dcls_zoo.state_dicts.load_torch_file`).

Strict loading and the key/shape check live in :mod:`dcls_zoo.state_dicts`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..positions import shared_group_key
from ..shared import SHARED_ATTRIBUTE
from ..state_dicts import clean_state_dict, load_torch_file, require_tensors, select_weights

__all__ = [
    "OFFICIAL_VERSIONS",
    "AXIS_ORDER_OF_VERSION",
    "OfficialConversion",
    "convert_official",
    "convert_official_checkpoint",
    "official_checkpoint_filter",
    "load_official_file",
    "select_state_dict",
    "source_axis_order",
    "is_converted",
]

AxisOrder = Literal["hw", "wh"]

# The official package version each released checkpoint was trained with (notes: official_dcls.md
# sections 0 and 2.7). The bilinear ICLR files came from the CUDA branch, whose axis order the
# official "v0" reproduces since dcls 0.0.6; the Gaussian file from dcls 0.0.5+ "gauss".
OFFICIAL_VERSIONS: dict[str, str] = {
    "convnext_dcls_tiny": "v0",
    "convnext_dcls_small": "v0",
    "convnext_dcls_base": "v0",
    "convnext_dcls_gauss_tiny": "gauss",
}

# Axis order of P (and SIG) under each official version: "hw" is ours (P[0] = rows), "wh" is
# reversed (P[0] = columns; for 3D, fully reversed), i.e. ours = official.flip(0).
AXIS_ORDER_OF_VERSION: dict[str, AxisOrder] = {"v0": "hw", "v1": "wh", "max": "wh", "gauss": "wh"}

# Facebook ConvNeXt -> timm key names, applied in order to every key (the same correspondence as
# timm's ConvNeXt checkpoint filter, written for keys only so it needs no model instance).
_FACEBOOK_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^downsample_layers\.(\d+)\.(\d+)\."), r"stages.\1.downsample.\2."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),
    (re.compile(r"\.dwconv\."), ".conv_dw."),
    (re.compile(r"\.pwconv(\d)\."), r".mlp.fc\1."),
    (re.compile(r"^norm\."), "head.norm."),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
)
# Any of these in a key means the dict still has facebook names.
_FACEBOOK_MARKERS = re.compile(r"^downsample_layers\.|\.dwconv\.|\.pwconv\d\.|^norm\.|^head\.(weight|bias)$|^stages\.\d+\.\d+\.")

_POSITION_NAMES = ("P", "SIG")
# Per-block copies of a shared position tensor may differ by at most this (they are one tensor in
# the authors' model, so real files hold identical copies; the slack only absorbs re-saving in
# another precision).
_COPY_RTOL = 1e-5
_COPY_ATOL = 1e-6


def load_official_file(path: str | os.PathLike[str]) -> Any:
    """An authors' ``.pth`` file, read with ``weights_only=True`` (see
    :func:`dcls_zoo.state_dicts.load_torch_file`: a refused pickle, a truncated or garbled file
    raise a ``ValueError`` naming the file; a missing one ``FileNotFoundError``)."""
    return load_torch_file(path, what="the authors' checkpoint")


def select_state_dict(checkpoint: Mapping[str, Any], key: str | None = None) -> dict[str, Tensor]:
    """The state dict inside a loaded authors' checkpoint.

    Args:
        checkpoint: ``{"model": sd}``, ``{"model_ema": sd}``, both, or a bare ``sd``.
        key: take ``checkpoint[key]``. By default ``"model_ema"`` when present (the EMA weights are
            the ones the authors evaluate; their released ``*_ema.pth`` files already store them
            under ``"model"``), else ``"model"``, else the dict itself.

    Returns:
        ``{name: Tensor}`` (a new dict; a ``module.``/``_orig_mod.`` prefix on every key, from DDP
        or ``torch.compile``, is removed).

    Raises:
        ValueError: ``key`` is absent, or the selected object is not a ``{str: Tensor}`` mapping.
    """
    return _select(checkpoint, key)[0]


def _select(checkpoint: Mapping[str, Any], key: str | None) -> tuple[dict[str, Tensor], str]:
    """:func:`select_state_dict` plus where the weights were found."""
    state, where = select_weights(checkpoint, key=key)
    return clean_state_dict(require_tensors(state, where), prefix="").state_dict, where


# --------------------------------------------------------------------------------------------
# the three fixes


def _rename_facebook(state: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in _FACEBOOK_RENAMES:
            new = pattern.sub(replacement, new)
        if new in renamed:
            raise ValueError(f"two checkpoint keys map to {new!r} (one of them is {key!r})")
        renamed[new] = value
    return renamed


def _position_group(key: str) -> tuple[str, str] | None:
    """``(shared key, block)`` for a per-block position key, e.g.
    ``stages.2.blocks.5.conv_dw.P`` -> ``("stages.2.dcls_shared.conv_dw.P", "stages.2")``.

    The group naming is :func:`~dcls_zoo.positions.shared_group_key`'s (stage prefix + role), as dclsify's, so any
    model it converts with ``share="stage"`` is covered, not only ConvNeXt.
    """
    module_path, _, name = key.rpartition(".")
    if name not in _POSITION_NAMES or f".{SHARED_ATTRIBUTE}." in f".{module_path}.":
        return None
    group = shared_group_key(module_path)
    if group is None or module_path == group[0]:
        return None
    stage, role = group
    return f"{stage}.{SHARED_ATTRIBUTE}.{role}.{name}", stage


def _collapse_shared_positions(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Replace each stage's per-block copies of ``P``/``SIG`` by one ``dcls_shared`` entry.

    Returns the new dict (order kept, the shared key where the first copy was) and the new keys.

    Raises:
        ValueError: the copies of one stage differ (naming the stage, both keys and the difference)
            or have different shapes.
    """
    out: dict[str, Tensor] = {}
    first_key: dict[str, str] = {}
    for key, value in state.items():
        group = _position_group(key)
        if group is None:
            out[key] = value
            continue
        shared_key, stage = group
        if shared_key not in out:
            out[shared_key], first_key[shared_key] = value, key
            continue
        reference = out[shared_key]
        if reference.shape != value.shape:
            raise ValueError(
                f"stage {stage!r}: the per-block copies of its shared positions differ in shape: "
                f"{first_key[shared_key]} {list(reference.shape)} vs {key} {list(value.shape)}"
            )
        if not torch.allclose(value.float(), reference.float(), rtol=_COPY_RTOL, atol=_COPY_ATOL):
            difference = (value.float() - reference.float()).abs().max().item()
            raise ValueError(
                f"stage {stage!r}: the per-block copies of its shared positions disagree "
                f"({first_key[shared_key]} vs {key}, max |difference| {difference:.3g}); the authors' "
                f"checkpoints share one tensor per stage, so this file was edited or is not one of them"
            )
    return out, list(first_key)


def _reorder_axes(state: dict[str, Tensor], keys: list[str], order: AxisOrder) -> None:
    """Flip dim 0 (the axis dim) of the position tensors ``keys`` in place when ``order`` is 'wh'."""
    if order == "hw":
        return
    for key in keys:
        # flip() copies, so the caller's tensors are never modified.
        state[key] = state[key].flip(0)


def _check_order(order: str) -> AxisOrder:
    if order not in ("hw", "wh"):
        raise ValueError(f"source_axis_order must be 'hw' (P[0] = rows, ours) or 'wh' (P[0] = columns), got {order!r}")
    return order  # type: ignore[return-value]


def source_axis_order(arch: str | None, has_sigma: bool) -> AxisOrder:
    """The axis order of the authors' checkpoints for ``arch`` (a pretrained tag is ignored).

    Known archs come from :data:`OFFICIAL_VERSIONS`. For others the order is inferred with a
    warning: a file with ``SIG`` comes from the official ``gauss``/``max`` versions (W-first); one
    without is taken as bilinear ``v0`` (H-first, the only bilinear files released); pass
    ``source_axis_order`` explicitly when that guess is wrong (e.g. official ``v1`` training).
    """
    name = arch.split(".", 1)[0] if arch else None
    if name in OFFICIAL_VERSIONS:
        return AXIS_ORDER_OF_VERSION[OFFICIAL_VERSIONS[name]]
    guess = "gauss" if has_sigma else "v0"
    warnings.warn(
        f"no official checkpoint is registered for arch {arch!r}; assuming it was trained with the official "
        f"version {guess!r} ({AXIS_ORDER_OF_VERSION[guess]!r} axis order). Pass source_axis_order='hw' or "
        f"'wh' to be explicit.",
        UserWarning,
        stacklevel=3,
    )
    return AXIS_ORDER_OF_VERSION[guess]


def is_converted(state: Mapping[str, Tensor]) -> bool:
    """True when ``state`` is already in our layout: timm names and no per-block shared positions."""
    return not any(_FACEBOOK_MARKERS.search(key) or _position_group(key) for key in state)


@dataclass
class OfficialConversion:
    """What :func:`convert_official` did.

    Attributes:
        state_dict: the converted ``{name: Tensor}`` (our layout).
        source: where the weights were found (``"checkpoint['model']"``).
        source_tensors: how many tensors the source state dict had.
        already_converted: the input was already in our layout and is returned as is.
        renamed: how many keys changed name (facebook -> timm).
        shared_keys: the stage-level position keys built from per-block copies.
        copies_collapsed: how many per-block copies they replace.
        axis_order: the source axis order applied (``None`` when there were no positions).
    """

    state_dict: dict[str, Tensor]
    source: str = "checkpoint"
    source_tensors: int = 0
    already_converted: bool = False
    renamed: int = 0
    shared_keys: list[str] = field(default_factory=list)
    copies_collapsed: int = 0
    axis_order: AxisOrder | None = None

    def __str__(self) -> str:
        if self.already_converted:
            return f"{self.source}: already in dcls-zoo's layout ({len(self.state_dict)} tensors), unchanged"
        lines = [
            f"{self.source}: {self.source_tensors} tensors, {self.renamed} keys renamed from facebook ConvNeXt "
            f"to timm names",
            f"collapsed {self.copies_collapsed} per-block copies of shared positions into "
            f"{len(self.shared_keys)} stage tensors ({', '.join(self.shared_keys[:2])}{', ...' if len(self.shared_keys) > 2 else ''})",
        ]
        if self.axis_order == "wh":
            lines.append("positions: source axis order 'wh' (W-first) -> flipped on dim 0 to ours (H-first)")
        elif self.axis_order == "hw":
            lines.append("positions: source axis order 'hw' (H-first, as ours) -> kept")
        return "\n".join(lines)


def _convert_state(
    state: dict[str, Tensor],
    arch: str | None,
    source_order: str | None,
    has_sigma: bool | None = None,
    source: str = "checkpoint",
) -> OfficialConversion:
    if is_converted(state):
        return OfficialConversion(state, source, len(state), already_converted=True)
    renamed = _rename_facebook(state)
    converted, position_keys = _collapse_shared_positions(renamed)
    report = OfficialConversion(
        converted,
        source,
        len(state),
        renamed=sum(old != new for old, new in zip(state, renamed)),
        shared_keys=position_keys,
        copies_collapsed=len(renamed) - len(converted) + len(position_keys),
    )
    if position_keys:
        if has_sigma is None:
            has_sigma = any(key.endswith(".SIG") for key in position_keys)
        order = _check_order(source_order) if source_order is not None else source_axis_order(arch, has_sigma)
        _reorder_axes(converted, position_keys, order)
        report.axis_order = order
    return report


def convert_official(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    arch: str,
    *,
    key: str | None = None,
    source_axis_order: str | None = None,
) -> OfficialConversion:
    """:func:`convert_official_checkpoint` with a report of what was done (for the command)."""
    if source_axis_order is not None:
        _check_order(source_axis_order)
    loaded = load_official_file(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state, source = _select(loaded, key)
    return _convert_state(state, arch, source_axis_order, source=source)


def convert_official_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    arch: str,
    *,
    key: str | None = None,
    source_axis_order: str | None = None,
) -> dict[str, Tensor]:
    """An authors' ConvNeXt-dcls checkpoint as a state dict for our ``arch``.

    Args:
        checkpoint: a file path (read with ``weights_only=True``; see :func:`load_official_file`),
            or a loaded ``{"model": sd}`` / ``{"model_ema": sd}`` / bare ``sd``.
        arch: our architecture name (``"convnext_dcls_tiny"``, ``"convnext_dcls_gauss_tiny"``, ...),
            which fixes the source axis order through :data:`OFFICIAL_VERSIONS`.
        key: which entry holds the weights (see :func:`select_state_dict`: ``"model_ema"`` is
            preferred when both ``"model"`` and ``"model_ema"`` exist).
        source_axis_order: override the table: ``"hw"`` (positions already H-first, official
            ``v0``) or ``"wh"`` (W-first, official ``v1``/``max``/``gauss``: flipped on dim 0).

    Returns:
        ``{name: Tensor}`` in our timm layout; shared positions as
        ``stages.{s}.dcls_shared.conv_dw.P`` of shape ``(2, C, 1, K)`` (and ``.SIG``), H-first.
        A dict already in our layout is returned unchanged (as a new dict, same tensors).

    Raises:
        ValueError: unreadable/unsafe file, missing ``key``, per-block position copies that disagree
            (naming the stage), or a bad ``source_axis_order``.
    """
    return convert_official(checkpoint, arch, key=key, source_axis_order=source_axis_order).state_dict


# --------------------------------------------------------------------------------------------
# timm integration and strict loading


def _model_arch(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return cfg.get("architecture") if isinstance(cfg, Mapping) else None


def official_checkpoint_filter(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """timm ``pretrained_filter_fn``: an authors' checkpoint (or ours) -> ``model``'s state dict.

    Idempotent: a dict whose keys are all ``model``'s keys, or that is already in our layout, is
    returned unchanged, so timm may run it on our own safetensors files too. The arch comes from
    ``model.pretrained_cfg["architecture"]``; an unregistered one falls back on whether ``model``
    has ``SIG`` (see :func:`source_axis_order`). Facebook ``Linear`` MLP weights ``(out, in)`` are
    reshaped to ``(out, in, 1, 1)`` when ``model`` uses 1x1 convs (timm's ``conv_mlp``).

    Raises:
        ValueError: as :func:`convert_official_checkpoint`. (Never ``TypeError``: timm retries a
            filter that raises it with one argument, which would hide the cause.)
    """
    target = model.state_dict()
    state = select_state_dict(state_dict)
    if set(state) <= set(target):
        return state
    has_sigma = any(key.rpartition(".")[2] == "SIG" for key in target)
    converted = _convert_state(state, _model_arch(model), None, has_sigma=has_sigma).state_dict
    for key, value in converted.items():
        want = target.get(key)
        if want is not None and value.dim() == 2 and want.dim() == 4 and want.shape[2:] == (1, 1):
            converted[key] = value.reshape(want.shape)
    return converted
