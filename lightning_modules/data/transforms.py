"""Transforms the DataModules build on: timm's RandAugment posterize, defined for 0 bits kept.

RandAugment's increasing posterize keeps ``4 - int(4 * magnitude / 10)`` bits, so its top
magnitude (which ``mstd0.5`` noise around ``m9`` reaches on about one call in 600) keeps 0.
Pillow <= 12 answered with a black image; Pillow 13 raises ``ValueError: bits must be between or
equal to 1 and 8``, which ended every ImageNet recipe within an epoch.
:func:`posterize_defined_for_zero_bits` keeps the recipe's behaviour on every Pillow.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from timm.data import auto_augment

__all__ = ["posterize_defined_for_zero_bits"]


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize augmentation, defined for 0 bits kept (every pixel 0).

    RandAugment's increasing posterize keeps ``4 - int(4 * magnitude / 10)`` bits, so its top
    magnitude (which ``mstd0.5`` noise around ``m9`` reaches on about one call in 600) keeps 0.
    Pillow <= 12 answered with a black image; Pillow 13 raises ``ValueError: bits must be between
    or equal to 1 and 8``, which ended every ImageNet recipe within an epoch. This keeps the
    recipe's behaviour on every Pillow.
    """
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def posterize_defined_for_zero_bits(transform: Any) -> Any:
    """``transform`` with the posterize ops of its RandAugment / AutoAugment / AugMix stages
    replaced by :func:`_posterize` (in place; the transform objects are ours, timm's table is untouched)."""
    for stage in getattr(transform, "transforms", [transform]):
        ops = list(getattr(stage, "ops", []))
        for sub_policy in getattr(stage, "policy", []):  # AutoAugment: a list of sub-policies
            ops.extend(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform
