"""ConvNeXt-dcls (ICLR 2023) and its Gaussian follow-up, built on timm's own ConvNeXt.

:class:`ConvNeXtDcls` is timm's ``ConvNeXt`` whose depthwise convolutions are handed to
:func:`~dcls_zoo.models.dclsify.dclsify` (positions shared per stage, stored once as
``stages.{i}.dcls_shared.conv_dw.P``). The same class builds the paper's ablation baselines
(7x7 dilated by 2, dense 17x17) and the compact variants with a stem for small images.

Registered on ``import dcls_zoo``:

| model | window / count | interpolation | params | MACs @224 |
|---|---|---|---|---|
| ``convnext_dcls_tiny`` | 17 / 34 | bilinear | 28.6M | 5.0G |
| ``convnext_dcls_small`` | 17 / 40 | bilinear | 50.2M | 9.5G |
| ``convnext_dcls_base`` | 17 / 40 | bilinear | 88.6M | 16.5G |
| ``convnext_dcls_gauss_{tiny,small,base}`` | 23 / 26, 34, 34 | gauss | = 7x7 ConvNeXt | |
| ``convnext_tiny_dil2`` | 7x7, dilation 2 | | 28.6M | 4.5G |
| ``convnext_tiny_k17`` | dense 17x17 | | 30.2M | 5.0G |
| ``convnext_dcls_{atto,femto,pico,nano}`` | 17 / equal params | bilinear | = timm's | |
| ``convnext_k7_{atto,femto,pico,nano}`` | 7x7 baselines | | = timm's | |
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from torch import nn

from ..layers import DclsConvNd
from ..positions import spread_model_positions_
from ..weights.official import official_checkpoint_filter
from ..weights.pretrained import build_model_with_weights
from ..weights.table import PRETRAINED_WEIGHTS
from .dclsify import DclsifyReport, dclsify
from .init import POSITION_INITS, init_model_positions, reset_module_parameters

__all__ = ["ConvNeXtDcls"]

# timm's defaults for the ConvNeXt arguments init_weights needs again (ConvNeXt keeps no copy).
_CONVNEXT_DEFAULTS = {name: p.default for name, p in inspect.signature(ConvNeXt.__init__).parameters.items()}

_PAPER = {
    "paper_ids": "arXiv:2112.03740",
    "paper_name": "Dilated convolution with learnable spacings (ICLR 2023)",
    "origin_url": "https://github.com/K-H-Ismail/ConvNeXt-dcls",
}
_GAUSS_PAPER = {
    "paper_ids": "arXiv:2306.00817",
    "paper_name": "Dilated Convolution with Learnable Spacings: beyond bilinear interpolation",
    "origin_url": "https://github.com/K-H-Ismail/Dilated-Convolution-with-Learnable-Spacings-PyTorch",
}


class ConvNeXtDcls(ConvNeXt):
    """timm's ConvNeXt with DCLS depthwise convolutions (or a plain-conv ablation baseline).

    Args:
        dcls_kernel_size: DCLS window: one size for every stage, or one per stage (e.g.
            ``(17, 15, 7, 3)`` for 16/8/4/2 px maps: a window no wider than a tap can reach inside
            its map); ``None`` keeps plain depthwise convolutions.
        dcls_kernel_count: elements per kernel; ``None`` picks the equal-parameter count (with
            per-stage windows, one count per stage, each keeping that stage's parameters).
        dcls_version: ``"bilinear"``, ``"triangle"`` or ``"gauss"``.
        dcls_share: ``"stage"`` (positions shared per stage, as the paper) or ``"layer"``.
        dcls_position_init: ``"normal"`` (the paper's ``N(0, 0.5)``: elements start near the
            window's centre and spread over hundreds of epochs) or ``"uniform"`` (over the whole
            window, as the official multi-dimensional layers start; for short schedules).
        dw_dilation: dilation of the plain depthwise convs (ablation baseline; needs
            ``dcls_kernel_size=None``).
        stem: ``"patch"`` (timm's 4x4 stride-4 patchify) or ``"small"`` (a 3x3 conv of stride
            ``stem_stride``, for 28-64 px images; stage 0 keeps the stem's resolution).
        stem_stride: stride of the small stem: 1 (32 px -> 32/16/8/4 px maps) or 2 (16/8/4/2).
        device, dtype: where and in what type to build every parameter (``"meta"``: build
            without allocating, then ``to_empty`` and :meth:`init_weights`).
        **kwargs: timm ``ConvNeXt`` arguments (``depths``, ``dims``, ``kernel_sizes``,
            ``num_classes``, ``drop_path_rate``, ``conv_mlp``, ...).
    """

    def __init__(
        self,
        dcls_kernel_size: int | Sequence[int] | None = 17,
        dcls_kernel_count: int | None = 34,
        dcls_version: str = "bilinear",
        dcls_share: str = "stage",
        dcls_position_init: str = "normal",
        dw_dilation: int = 1,
        stem: str = "patch",
        stem_stride: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, dtype=dtype, **kwargs)
        if stem not in ("patch", "small"):
            raise ValueError(f"stem must be 'patch' or 'small', got {stem!r}")
        if stem_stride not in (1, 2) or (stem_stride != 1 and stem != "small"):
            raise ValueError(f"stem_stride must be 1 or 2 and needs stem='small', got stem_stride={stem_stride!r}, stem={stem!r}")
        if dcls_position_init not in POSITION_INITS:
            raise ValueError(f"dcls_position_init must be 'normal' or 'uniform', got {dcls_position_init!r}")
        if dw_dilation != 1 and dcls_kernel_size is not None:
            raise ValueError("dw_dilation is for plain-conv baselines: set dcls_kernel_size=None")
        # what init_weights needs to initialise the model again as built
        self._init_settings = dict(
            ls_init_value=kwargs.get("ls_init_value", _CONVNEXT_DEFAULTS["ls_init_value"]),
            head_init_scale=kwargs.get("head_init_scale", _CONVNEXT_DEFAULTS["head_init_scale"]),
            position_init=dcls_position_init,
        )
        self._small_stem = stem == "small"
        if stem == "small":
            self._use_small_stem(stem_stride)
        if dw_dilation != 1:
            self._dilate_depthwise(dw_dilation)
        self.dclsify_report: DclsifyReport | None = None
        if dcls_kernel_size is not None:
            self.dclsify_report = self._dclsify_stages(dcls_kernel_size, dcls_kernel_count, dcls_version, dcls_share)
            self._init_dcls_weights()
            if dcls_position_init == "uniform":
                spread_model_positions_(self)

    def _dclsify_stages(
        self, window: int | Sequence[int], count: int | None, version: str, share: str
    ) -> DclsifyReport:
        """DCLS depthwise convs with one window for the model, or one per stage (one report)."""
        if isinstance(window, int):
            return dclsify(self, window, count, version=version, share=share)
        windows = tuple(window)
        if len(windows) != len(self.stages) or not all(isinstance(w, int) for w in windows):
            raise ValueError(
                f"dcls_kernel_size must be an int or one int per stage ({len(self.stages)}), got {window!r}"
            )
        report = DclsifyReport()
        for index, stage_window in enumerate(windows):
            prefix = f"stages.{index}."
            part = dclsify(
                self, stage_window, count, version=version, share=share,
                include=lambda path, conv, prefix=prefix: path.startswith(prefix),
            )
            report.converted += part.converted
            report.params_before += part.params_before
            report.params_after += part.params_after
        report.kernel_count = max(c.kernel_count for c in report.converted)
        return report

    def _use_small_stem(self, stride: int) -> None:
        """3x3 stem of ``stride`` (1: a 28 px image keeps 28/14/7/3 px maps; 2: 14/7/3/1)."""
        patch_conv, norm = self.stem[0], self.stem[1]
        self.stem = nn.Sequential(
            nn.Conv2d(patch_conv.in_channels, patch_conv.out_channels, 3, stride=stride, padding=1,
                      bias=patch_conv.bias is not None, device=patch_conv.weight.device, dtype=patch_conv.weight.dtype),
            norm,
        )
        # built after timm's init, it keeps PyTorch's default conv init (init_weights does the same)
        for info in self.feature_info:
            info["reduction"] = info["reduction"] * stride // 4

    def _dilate_depthwise(self, dilation: int) -> None:
        for stage in self.stages:
            for block in stage.blocks:
                conv = block.conv_dw
                block.conv_dw = nn.Conv2d(
                    conv.in_channels, conv.out_channels, conv.kernel_size,
                    padding=dilation * (conv.kernel_size[0] // 2), dilation=dilation,
                    groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype,
                )
                self._init_plain(block.conv_dw)

    @staticmethod
    @torch.no_grad()
    def _init_plain(module: nn.Module) -> None:
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

    def _init_dcls_weights(self) -> None:
        # As ConvNeXt-dcls (and timm's ConvNeXt for its convs): trunc-normal(0.02) weights, zero bias.
        for module in self.modules():
            if isinstance(module, DclsConvNd):
                self._init_plain(module)

    @torch.no_grad()
    def init_weights(self, needs_reset: bool = True) -> None:
        """Initialise every parameter as a fresh build does: after ``to_empty``, or to start over.

        ``timm.create_model(name, device="meta")`` allocates nothing; ``model.to_empty(device=...)``
        gives the tensors storage with undefined values, and this fills them:

        1. (``needs_reset``) every module's own init (:func:`~dcls_zoo.models.init.reset_module_parameters`):
           norm weights 1 and biases 0;
        2. timm's ConvNeXt init: trunc-normal(0.02) conv and linear weights, zero biases, the
           classifier scaled by ``head_init_scale``; the small stem keeps PyTorch's conv init, as built;
        3. layer scale (``gamma``) at ``ls_init_value``;
        4. the DCLS layers: trunc-normal(0.02) weights, zero biases, positions as
           ``dcls_position_init`` (:func:`~dcls_zoo.models.init.init_model_positions`), widths
           at their initial value.

        The values follow the same distributions as a fresh build's, not the same draws.
        """
        settings = self._init_settings
        if needs_reset:
            reset_module_parameters(self)
        small_stem = self.stem[0] if self._small_stem else None
        for name, module in self.named_modules():
            if module is small_stem:
                module.reset_parameters()
            else:
                _init_convnext_layer(module, name, settings["head_init_scale"])
        for module in self.modules():
            if isinstance(module, ConvNeXtBlock) and module.gamma is not None:
                module.gamma.fill_(settings["ls_init_value"])
        self._init_dcls_weights()
        init_model_positions(self, settings["position_init"])


@torch.no_grad()
def _init_convnext_layer(module: nn.Module, name: str, head_init_scale: float) -> None:
    """ConvNeXt's init of one layer (as timm's ``ConvNeXt`` constructor applies it, stated here to
    depend on timm's public API only): convolution and linear weights truncated-normal with std
    0.02, biases zero, the classifier ``head.fc`` scaled by ``head_init_scale``."""
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        return
    nn.init.trunc_normal_(module.weight, std=0.02)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and "head." in name:
        module.weight.mul_(head_init_scale)
        module.bias.mul_(head_init_scale)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    # pretrained=True resolves through dcls_zoo.weights.pretrained (Hub repo, else the authors' file).
    return build_model_with_weights(
        ConvNeXtDcls,
        variant,
        pretrained,
        pretrained_filter_fn=official_checkpoint_filter,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0",
        "classifier": "head.fc",
        "license": "mit",
        **kwargs,
    }


def _fallback_url(tag: str) -> str:
    # timm's cfg keeps the authors' URL (timm.list_pretrained, pretrained_cfg['url']); the Hub repo,
    # revision and checksums live in dcls_zoo.weights.table.PRETRAINED_WEIGHTS.
    url = PRETRAINED_WEIGHTS[tag].fallback_url
    assert url is not None
    return url


default_cfgs = generate_default_cfgs(
    {
        "convnext_dcls_tiny.in1k": _cfg(
            _fallback_url("convnext_dcls_tiny.in1k"),
            notes=("authors' release (Zenodo 7112021, EMA): ImageNet-1k top-1 82.5 in the paper",),
            **_PAPER,
        ),
        "convnext_dcls_small.in1k": _cfg(
            _fallback_url("convnext_dcls_small.in1k"),
            notes=("authors' release (Zenodo 7112021, EMA): ImageNet-1k top-1 83.7 in the paper",),
            **_PAPER,
        ),
        "convnext_dcls_base.in1k": _cfg(
            _fallback_url("convnext_dcls_base.in1k"),
            notes=("authors' release (Zenodo 7112021, EMA): ImageNet-1k top-1 84.1 in the paper",),
            **_PAPER,
        ),
        "convnext_dcls_gauss_tiny.in1k": _cfg(
            _fallback_url("convnext_dcls_gauss_tiny.in1k"),
            notes=("authors' release (Zenodo 8029747, EMA); W-first positions, converted on load",),
            **_GAUSS_PAPER,
        ),
        "convnext_dcls_gauss_small": _cfg(**_GAUSS_PAPER),
        "convnext_dcls_gauss_base": _cfg(**_GAUSS_PAPER),
        "convnext_tiny_dil2": _cfg(notes=("ablation baseline of the DCLS paper",), **_PAPER),
        "convnext_tiny_k17": _cfg(notes=("ablation baseline of the DCLS paper",), **_PAPER),
        **{f"convnext_dcls_{size}": _cfg() for size in ("atto", "femto", "pico", "nano")},
        **{f"convnext_k7_{size}": _cfg() for size in ("atto", "femto", "pico", "nano")},
    }
)

_TINY = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
_SMALL = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
_BASE = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
# timm's compact widths (convnext_atto ... convnext_nano)
_COMPACT = {
    "atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True),
    "femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True),
    "pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True),
    "nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True),
}
_PLAIN = dict(dcls_kernel_size=None, dcls_kernel_count=None)


def _build(variant: str, pretrained: bool, model_args: dict[str, Any], kwargs: dict[str, Any]) -> ConvNeXtDcls:
    return _create(variant, pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_dcls_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """ConvNeXt-T-dcls: 17x17 window, 34 bilinear elements, positions shared per stage (28.6M, 5.0G)."""
    return _build("convnext_dcls_tiny", pretrained, dict(_TINY, dcls_kernel_size=17, dcls_kernel_count=34), kwargs)


@register_model
def convnext_dcls_small(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """ConvNeXt-S-dcls: 17x17 window, 40 bilinear elements (50.2M, 9.5G)."""
    return _build("convnext_dcls_small", pretrained, dict(_SMALL, dcls_kernel_size=17, dcls_kernel_count=40), kwargs)


@register_model
def convnext_dcls_base(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """ConvNeXt-B-dcls: 17x17 window, 40 bilinear elements (88.6M, 16.5G)."""
    return _build("convnext_dcls_base", pretrained, dict(_BASE, dcls_kernel_size=17, dcls_kernel_count=40), kwargs)


@register_model
def convnext_dcls_gauss_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """ConvNeXt-T-dcls Gaussian: 23x23 window, 26 elements, positions and sigmas shared per stage."""
    args = dict(_TINY, dcls_kernel_size=23, dcls_kernel_count=26, dcls_version="gauss")
    return _build("convnext_dcls_gauss_tiny", pretrained, args, kwargs)


@register_model
def convnext_dcls_gauss_small(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """ConvNeXt-S-dcls Gaussian: 23x23 window, 34 elements (the 7x7 model's parameter count)."""
    args = dict(_SMALL, dcls_kernel_size=23, dcls_kernel_count=34, dcls_version="gauss")
    return _build("convnext_dcls_gauss_small", pretrained, args, kwargs)


@register_model
def convnext_dcls_gauss_base(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """ConvNeXt-B-dcls Gaussian: 23x23 window, 34 elements (the 7x7 model's parameter count)."""
    args = dict(_BASE, dcls_kernel_size=23, dcls_kernel_count=34, dcls_version="gauss")
    return _build("convnext_dcls_gauss_base", pretrained, args, kwargs)


@register_model
def convnext_tiny_dil2(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """Ablation baseline: ConvNeXt-T with 7x7 depthwise convolutions dilated by 2."""
    return _build("convnext_tiny_dil2", pretrained, dict(_TINY, **_PLAIN, dw_dilation=2), kwargs)


@register_model
def convnext_tiny_k17(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """Ablation baseline: ConvNeXt-T with dense 17x17 depthwise convolutions."""
    return _build("convnext_tiny_k17", pretrained, dict(_TINY, **_PLAIN, kernel_sizes=17), kwargs)


def _compact(size: str, dcls: bool, pretrained: bool, kwargs: dict[str, Any]) -> ConvNeXtDcls:
    variant = f"convnext_dcls_{size}" if dcls else f"convnext_k7_{size}"
    extra = dict(dcls_kernel_size=17, dcls_kernel_count=None) if dcls else _PLAIN
    return _build(variant, pretrained, dict(_COMPACT[size], **extra), kwargs)


@register_model
def convnext_dcls_atto(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """Compact ConvNeXt-dcls at timm's atto widths (17x17, equal-parameter element count)."""
    return _compact("atto", True, pretrained, kwargs)


@register_model
def convnext_dcls_femto(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """Compact ConvNeXt-dcls at timm's femto widths."""
    return _compact("femto", True, pretrained, kwargs)


@register_model
def convnext_dcls_pico(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """Compact ConvNeXt-dcls at timm's pico widths."""
    return _compact("pico", True, pretrained, kwargs)


@register_model
def convnext_dcls_nano(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """Compact ConvNeXt-dcls at timm's nano widths."""
    return _compact("nano", True, pretrained, kwargs)


@register_model
def convnext_k7_atto(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """7x7 baseline at atto widths (timm's convnext_atto, with the ``stem`` option)."""
    return _compact("atto", False, pretrained, kwargs)


@register_model
def convnext_k7_femto(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """7x7 baseline at femto widths."""
    return _compact("femto", False, pretrained, kwargs)


@register_model
def convnext_k7_pico(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """7x7 baseline at pico widths."""
    return _compact("pico", False, pretrained, kwargs)


@register_model
def convnext_k7_nano(pretrained: bool = False, **kwargs: Any) -> ConvNeXtDcls:
    """7x7 baseline at nano widths."""
    return _compact("nano", False, pretrained, kwargs)
