"""ResNet-50-dcls: timm's ResNet-50 with every 3x3 block convolution turned into a DCLS convolution.

The paper (Khalfaoui-Hassani et al., ICLR 2023, section 5 / table 2) replaces the 3x3 ``conv2`` of
every bottleneck by a DCLS convolution with a 7x7 window and 5 elements per kernel (24.0M
parameters, 12.3G multiply-adds at 224x224), or 6 elements (26.0M), positions shared by the
blocks of a stage, bilinear interpolation, trained with timm's A3 recipe. The authors'
``resnet_dcls`` lived in a 2022 timm fork with its own copy of the ResNet code; here the model is
timm's own :class:`~timm.models.resnet.ResNet`, converted after construction by
:func:`~dcls_zoo.models.dclsify.dclsify`, so every timm feature (``features_only``,
``forward_intermediates``, ``reset_classifier``, ...) keeps working.

Registered in timm on import::

    import dcls_zoo.models.resnet_dcls  # noqa: F401
    model = timm.create_model("resnet50_dcls", num_classes=10)

Positions are stored once per stage as ``layer{1..4}.dcls_shared.conv2.P``; call
:func:`~dcls_zoo.positions.clamp_model_positions_` after every optimizer step as the
authors did. No weights are hosted (see ``default_cfgs``), so ``pretrained=True`` raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from ..layers import DclsConvNd
from ..positions import stage_of
from ..weights.pretrained import build_model_with_weights
from .dclsify import DclsifyReport, dclsify
from .init import init_model_positions, reset_module_parameters

__all__ = ["ResNetDcls", "residual_block_conv"]

_ZERO_INIT_LAST = inspect.signature(ResNet.__init__).parameters["zero_init_last"].default


def residual_block_conv(path: str, conv: nn.Module) -> bool:
    """dclsify filter: the convolutions inside the residual branches of the stages.

    Keeps the stem (``conv1``, outside any ``layerN`` stage, 7x7 in the paper's model) and the
    shortcut convolutions (``downsample``, 3x3 in some ResNet variants) as plain convolutions.
    """
    return stage_of(path) is not None and ".downsample." not in f".{path}."


class ResNetDcls(ResNet):
    """timm's ResNet whose residual-branch ``k x k`` convolutions are DCLS convolutions.

    Args:
        dcls_kernel_size: DCLS window (the paper: 7 for 3x3 convolutions).
        dcls_kernel_count: elements per kernel; ``None`` picks the paper's equal-parameter count
            (5 for ResNet-50 at window 7).
        dcls_version: interpolation (``"bilinear"`` as the paper, ``"gauss"``, ``"triangle"``).
        dcls_share: ``"stage"`` (one position tensor per stage and role, the paper's ``dcls_sync``),
            ``"layer"``, or a function ``path -> group`` (see :func:`dclsify`).
        dcls_include: which targeted convolutions to convert (default: the residual branches,
            :func:`residual_block_conv`); gets ``(path, conv)``.
        device, dtype: where and in what type to build every parameter and buffer (``"meta"``:
            build without allocating, then ``to_empty`` and :meth:`init_weights`).
        **kwargs: :class:`timm.models.resnet.ResNet` arguments (``block``, ``layers``,
            ``num_classes``, ...). ``output_stride`` below 32 dilates the last stages' 3x3
            convolutions, which DCLS cannot take over, so dclsify raises ``ValueError`` then.

    Attributes:
        dclsify_report: the :class:`~dcls_zoo.models.dclsify.DclsifyReport` of the conversion.
    """

    def __init__(
        self,
        *args: Any,
        dcls_kernel_size: int = 7,
        dcls_kernel_count: int | None = None,
        dcls_version: str = "bilinear",
        dcls_share: str | Callable[[str], str | None] = "stage",
        dcls_include: Callable[[str, nn.Module], bool] = residual_block_conv,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, device=device, dtype=dtype, **kwargs)
        self._zero_init_last = kwargs.get("zero_init_last", _ZERO_INIT_LAST)
        # Bottleneck's 1x1 convs are never targets; targets="all" (not "depthwise") because the
        # 3x3 convs are dense (groups=1) or grouped (ResNeXt, cardinality > 1).
        self.dclsify_report: DclsifyReport = dclsify(
            self,
            dilated_kernel_size=dcls_kernel_size,
            kernel_count=dcls_kernel_count,
            version=dcls_version,
            targets="all",
            share=dcls_share,
            include=dcls_include,
        )
        # super().__init__ initialised the plain convs before dclsify existed; the new DCLS
        # weights only carry their layer default, so give them timm's ResNet init here.
        self._init_dcls_weights()

    @torch.no_grad()
    def init_weights(self, zero_init_last: bool | None = None, needs_reset: bool = True) -> None:
        """timm's ResNet init extended to the DCLS layers: after ``to_empty``, or to start over.

        ``timm.create_model(name, device="meta")`` allocates nothing; ``model.to_empty(device=...)``
        gives the tensors storage with undefined values, and this fills them:

        1. (``needs_reset``) every module's own init (:func:`~dcls_zoo.models.init.reset_module_parameters`):
           BatchNorm weights 1, biases 0 and running statistics, the classifier's default init;
        2. timm's ResNet init: kaiming-normal (fan-out) conv weights, and with ``zero_init_last``
           each block's last BatchNorm weight at 0;
        3. the DCLS layers: kaiming-normal (fan-out) weights (:meth:`_init_dcls_weights`),
           positions ``N(0, 0.5)`` clamped.

        timm's ``ResNet.__init__`` calls this on its freshly built modules, before dclsify: there
        steps 1 and 3 are skipped (the modules hold their constructor init; there are no DCLS
        layers yet), so a fresh build draws the same numbers as timm's.

        Args:
            zero_init_last: default: as the model was built.
            needs_reset: whether to run step 1.
        """
        built = "dclsify_report" in self.__dict__
        if zero_init_last is None:
            zero_init_last = self._zero_init_last
        if needs_reset and built:
            reset_module_parameters(self)
        super().init_weights(zero_init_last=zero_init_last)
        self._init_dcls_weights()
        if built:
            init_model_positions(self)

    def _init_dcls_weights(self) -> None:
        """Kaiming-normal, fan-out, for the DCLS weights ``(C_out, C_in / groups, K)``.

        torch's fan-out of that shape is ``C_out * K``: each input pixel reaches ``C_out`` channels
        through ``K`` elements, as it reaches them through ``k * k`` taps in the replaced conv, so
        this is the DCLS analogue of timm's ``kaiming_normal_(mode='fan_out')`` for ``nn.Conv2d``.
        (Positions keep their ``N(0, 0.5)`` init; the ResNet convs have no bias.)
        """
        for module in self.modules():
            if isinstance(module, DclsConvNd):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _create_resnet_dcls(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetDcls:
    # flatten_sequential=False keeps each ``layerN`` one module, so its forward hooks build the
    # stage's shared footprints once per forward in features_only mode too (flattened, the
    # blocks would run without their stage and rebuild them block by block).
    # pretrained=True resolves through dcls_zoo.weights.pretrained (no ResNet row yet: it raises).
    return build_model_with_weights(
        ResNetDcls, variant, pretrained, feature_cfg=dict(flatten_sequential=False), **kwargs
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """No weights: the paper's two ResNet-50-dcls checkpoints are in Zenodo record 8373830, under
    file names we could not verify, so no ``url``/``hf_hub_id`` is given and ``pretrained=True``
    raises. The data config is timm's ``resnet50.a3_in1k`` (``_r3cfg`` in timm's resnet.py): the
    A3 recipe trains at 160x160 and evaluates at 224x224, crop 0.95, bicubic.
    """
    return {
        "num_classes": 1000,
        "input_size": (3, 160, 160),
        "pool_size": (5, 5),
        "test_input_size": (3, 224, 224),
        "crop_pct": 0.95,
        "test_crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "mit",
        "origin_url": "https://zenodo.org/records/8373830",
        "paper_ids": "arXiv:2112.03740",
        "paper_name": "Dilated convolution with learnable spacings",
        "notes": ("no weights hosted; the authors' checkpoints are in the Zenodo record (origin_url)",),
        **kwargs,
    }


# Module-level and defined before the @register_model functions: register_model reads it.
default_cfgs = generate_default_cfgs(
    {
        "resnet50_dcls.a3_in1k": _cfg(),
        "resnet50_dcls_k6.a3_in1k": _cfg(),
    }
)


@register_model
def resnet50_dcls(pretrained: bool = False, **kwargs: Any) -> ResNetDcls:
    """ResNet-50-dcls: 3x3 -> DCLS 7x7 window, 5 elements, bilinear, positions per stage (24.0M, 12.3G MACs)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), dcls_kernel_size=7, dcls_kernel_count=5)
    return _create_resnet_dcls("resnet50_dcls", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_dcls_k6(pretrained: bool = False, **kwargs: Any) -> ResNetDcls:
    """ResNet-50-dcls with 6 elements per kernel (26.0M parameters, 12.3G MACs)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), dcls_kernel_size=7, dcls_kernel_count=6)
    return _create_resnet_dcls("resnet50_dcls_k6", pretrained, **dict(model_args, **kwargs))
