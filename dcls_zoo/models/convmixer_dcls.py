"""ConvMixer-dcls: an isotropic testbed for learned spacings, built on timm's own ConvMixer.

ConvMixer ("Patches Are All You Need?") patchifies once and then repeats one block at one
resolution: a depthwise ``k x k`` convolution (in a residual), then a pointwise one. Every block
sees the whole map at full resolution, unlike ConvNeXt whose later stages see 4 px and 2 px maps
on small images, so the DCLS windows keep their meaning in every layer.

:class:`ConvMixerDcls` is timm's ``ConvMixer`` whose depthwise convolutions are handed to
:func:`~dcls_zoo.models.dclsify.dclsify` at equal parameter count. Positions are shared by all
the depthwise layers of the model by default (``dcls_share="model"``, one ``P`` stored once as
``dcls_shared.conv_dw.P``): the authors' timm fork had the same option (``dcls_sync``), and it
buys the most elements per kernel for the parameters (with ``depth`` layers and ``k x k`` dense
kernels, ``depth * k^2 // (depth + 2)`` elements instead of ``k^2 // 3`` with a ``P`` per
layer). ``dcls_share="layer"`` gives every layer its own positions. With ``dcls_kernel_size=None``
the same class is the dense baseline (plain depthwise ``k x k``).

Registered on ``import dcls_zoo``: compact sizes for 28-32 px images, 64 channels, 8 blocks,
patch 2, so every block works on a 16 x 16 map (32 px input), and the DCLS window (13) reaches
6 px to each side, most of the map, where the dense 5 x 5 kernel reaches 2 px:

| model | depthwise | elements | params (10 classes, 1 channel) |
|---|---|---|---|
| ``convmixer_dcls_64_8`` | DCLS 13 x 13 window, one ``P`` for all 8 layers | 20 | 49,738 |
| ``convmixer_64_8_k5`` | dense 5 x 5 (the parameter budget) | | 49,738 |
| ``convmixer_64_8_k13`` | dense 13 x 13 (as large as DCLS's window) | | 123,466 |

(8 layers x 25 weights = 8 x 20 weights + 20 x 2 shared positions per channel: exactly equal.)
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models.convmixer import ConvMixer

from ..layers import DclsConvNd
from ..positions import spread_model_positions_
from ..weights.pretrained import build_model_with_weights
from .dclsify import DclsifyReport, dclsify
from .init import init_model_positions, reset_module_parameters

__all__ = ["ConvMixerDcls"]

# the module path of every depthwise convolution of timm's ConvMixer: blocks.{i}.0 is the residual
_DEPTHWISE_SUFFIX = ".0.fn.0"
# the one group all depthwise layers share with dcls_share="model": registered on the model itself
# (dclsify's "<owner path>/<role>", owner "" = the model) as dcls_shared.conv_dw
_MODEL_GROUP = "/conv_dw"


class ConvMixerDcls(ConvMixer):
    """timm's ConvMixer with DCLS depthwise convolutions (or the dense baseline).

    Args:
        dim: channels of every block.
        depth: number of blocks.
        kernel_size: the dense depthwise kernel (the baseline's, and the parameter budget of DCLS).
        patch_size: the patchify stem's size and stride (1 or 2 keeps small images' maps large).
        dcls_kernel_size: DCLS window (odd); ``None`` keeps the plain ``kernel_size`` convolutions.
        dcls_kernel_count: elements per kernel; ``None`` picks the equal-parameter count.
        dcls_version: ``"bilinear"``, ``"triangle"`` or ``"gauss"``.
        dcls_share: ``"model"`` (one ``P`` for every depthwise layer, the authors' ``dcls_sync``)
            or ``"layer"`` (a ``P`` per layer).
        dcls_position_init: ``"normal"`` (the paper's ``N(0, 0.5)``, near the window's centre) or
            ``"uniform"`` (spread over the whole window; for short schedules).
        channels_last: run the blocks on channels-last maps (the same function). PyTorch's CPU
            depthwise convolutions compute their gradients 2-3x faster so (a ConvMixer-64/8 step at
            batch 64 on one thread: dense 5x5 1.2 s -> 0.6 s, dense 13x13 5.3 s -> 1.7 s); DCLS
            layers convert to it internally anyway.
        **kwargs: timm ``ConvMixer`` arguments (``in_chans``, ``num_classes``, ``act_layer``, ...).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        kernel_size: int = 9,
        patch_size: int = 7,
        dcls_kernel_size: int | None = None,
        dcls_kernel_count: int | None = None,
        dcls_version: str = "bilinear",
        dcls_share: str = "model",
        dcls_position_init: str = "normal",
        channels_last: bool = True,
        **kwargs: Any,
    ) -> None:
        if dcls_share not in ("model", "layer"):
            raise ValueError(f"dcls_share must be 'model' or 'layer', got {dcls_share!r}")
        if dcls_position_init not in ("normal", "uniform"):
            raise ValueError(f"dcls_position_init must be 'normal' or 'uniform', got {dcls_position_init!r}")
        if dcls_kernel_size is not None and (isinstance(dcls_kernel_size, bool) or not isinstance(dcls_kernel_size, int)
                                             or dcls_kernel_size < kernel_size or dcls_kernel_size % 2 == 0):
            raise ValueError(f"dcls_kernel_size must be an odd int >= kernel_size ({kernel_size}) or None, "
                             f"got {dcls_kernel_size!r}")
        super().__init__(dim, depth, kernel_size=kernel_size, patch_size=patch_size, **kwargs)
        self.channels_last = bool(channels_last)
        self.dcls_position_init = dcls_position_init  # what init_weights draws again
        self.dclsify_report: DclsifyReport | None = None
        if dcls_kernel_size is not None:
            self.dclsify_report = dclsify(
                self, dcls_kernel_size, dcls_kernel_count, version=dcls_version,
                share=(lambda path: _MODEL_GROUP) if dcls_share == "model" else "layer",
                include=lambda path, conv: path.endswith(_DEPTHWISE_SUFFIX),
            )
            if dcls_position_init == "uniform":
                spread_model_positions_(self)

    @torch.no_grad()
    def init_weights(self, needs_reset: bool = True) -> None:
        """Initialise every parameter and buffer as a fresh build does: after ``to_empty`` (a
        ``device="meta"`` build), or to start over.

        timm's ConvMixer keeps PyTorch's default init everywhere; so does this:

        1. (``needs_reset``) every plain module's ``reset_parameters`` (convolutions, linear,
           BatchNorm weights and running statistics);
        2. the DCLS layers' own init: kaiming-uniform weights, as the official layers;
        3. the positions (shared or per layer): ``N(0, 0.5)`` clamped, or uniform over the window
           when the model was built with ``dcls_position_init="uniform"``.
        """
        if needs_reset:
            reset_module_parameters(self)
        for module in self.modules():
            if isinstance(module, DclsConvNd):
                module.reset_parameters()
        init_model_positions(self, self.dcls_position_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, dim, H / patch, W / patch)`` (channels-last memory when asked)."""
        # timm's body, with the memory format first (TorchScript compiles no super() call)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward_intermediates(x, *args, **kwargs)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvMixerDcls:
    # timm's ConvMixer exposes its blocks through the feature getter, not a sequential walk
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_weights(
        ConvMixerDcls, variant, pretrained, feature_cfg={"out_indices": out_indices, "feature_cls": "getter"}, **kwargs
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "convmixer_dcls_64_8": _cfg(),
    "convmixer_64_8_k5": _cfg(),
    "convmixer_64_8_k13": _cfg(),
})

# compact: 64 channels, 8 blocks, patch 2 (32 px images -> 16 x 16 maps in every block)
_COMPACT = {"dim": 64, "depth": 8, "kernel_size": 5, "patch_size": 2}


@register_model
def convmixer_dcls_64_8(pretrained: bool = False, **kwargs: Any) -> ConvMixerDcls:
    """ConvMixer-64/8-dcls: 13x13 DCLS windows at the 5x5 model's parameters, one P for all 8 layers."""
    return _create("convmixer_dcls_64_8", pretrained, **{**_COMPACT, "dcls_kernel_size": 13, **kwargs})


@register_model
def convmixer_64_8_k5(pretrained: bool = False, **kwargs: Any) -> ConvMixerDcls:
    """ConvMixer-64/8 baseline: dense 5x5 depthwise kernels (patch 2)."""
    return _create("convmixer_64_8_k5", pretrained, **{**_COMPACT, **kwargs})


@register_model
def convmixer_64_8_k13(pretrained: bool = False, **kwargs: Any) -> ConvMixerDcls:
    """ConvMixer-64/8 baseline: dense 13x13 depthwise kernels, as large as the DCLS window (patch 2)."""
    return _create("convmixer_64_8_k13", pretrained, **{**_COMPACT, "kernel_size": 13, **kwargs})

