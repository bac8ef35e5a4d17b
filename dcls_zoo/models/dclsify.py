"""Turn the convolutions of any model into DCLS convolutions at equal parameter count.

``dclsify(model, dilated_kernel_size=17)`` replaces the model's depthwise convolutions (or every
``k x k`` convolution with ``targets="all"``) by :class:`~dcls_zoo.Dcls1d`/``2d``/``3d`` layers in
place and returns a :class:`DclsifyReport` of what it changed.

Positions are shared per stage by module path (``share="stage"``): convolutions whose paths have
the same stage prefix (``stages.1``, ``layer3``, ...) and the same role inside their block
(``conv_dw``, ``conv2``, ...) share one :class:`~dcls_zoo.shared.SharedPositions`, registered on
the stage module as ``<stage>.dcls_shared.<role>`` (state-dict keys ``...dcls_shared.conv_dw.P``).
The official helper shares by "the channel width grew", which merges stages of equal width.

``kernel_count`` defaults to the paper's choice: the one count for the whole model that keeps
the total parameter count of the converted layers (weights + positions + widths) at or just
below the original weights' (ConvNeXt-T, 7x7 -> 17x17 bilinear: 34; Gaussian at 23x23: 26;
ResNet-50, 3x3 -> 7x7: 5).

Non-square kernels: an axis along which the original kernel has size 1 keeps size 1 and learns
no position, so a ``1 x 11`` band (InceptionNeXt) becomes a ``1 x 17`` DCLS band whose elements
move along the width only (``learned_axes=(1,)``), and each of its elements costs one position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..construct import resolve_interpolation
from ..layers import Dcls1d, Dcls2d, Dcls3d, DclsConvNd
from ..positions import shared_group_key
from ..shared import SharedPositions, register_shared_positions

__all__ = ["ConvertedLayer", "DclsifyReport", "dclsify"]

_DCLS_BY_CONV: dict[type[nn.Module], type[DclsConvNd]] = {nn.Conv1d: Dcls1d, nn.Conv2d: Dcls2d, nn.Conv3d: Dcls3d}

@dataclass
class ConvertedLayer:
    """One convolution :func:`dclsify` replaced: where, its old kernel, its window and elements, its group."""

    path: str
    kernel_size: tuple[int, ...]
    dilated_kernel_size: tuple[int, ...]
    kernel_count: int
    shared_group: str | None


@dataclass
class DclsifyReport:
    """What :func:`dclsify` did: converted layers, skipped ones with the reason, parameter counts."""

    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    kernel_count: int = 0
    params_before: int = 0
    params_after: int = 0

    def __str__(self) -> str:
        lines = [
            f"dclsify: {len(self.converted)} convolutions -> DCLS (kernel_count={self.kernel_count}), "
            f"converted parameters {self.params_before:,} -> {self.params_after:,}"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped.items()]
        return "\n".join(lines)


def _is_target(conv: nn.Module, targets: str) -> bool:
    if type(conv) not in _DCLS_BY_CONV and not isinstance(conv, nn.modules.conv._ConvNd):
        return False
    if all(k == 1 for k in conv.kernel_size):
        return False
    if targets == "depthwise":
        return conv.groups == conv.in_channels == conv.out_channels
    return True


def _unsupported(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become a DCLS layer, or None."""
    if type(conv) not in _DCLS_BY_CONV:
        return f"{type(conv).__name__} is not a plain nn.Conv1d/2d/3d (transposed or custom forward)"
    if any(d != 1 for d in conv.dilation):
        return f"dilation {conv.dilation} (DCLS learns the spacing: convert the undilated conv)"
    if conv.padding == "same":
        return None
    if conv.padding == "valid":
        return "padding 'valid' shrinks the output by the kernel size, which the larger window would change"
    if any(2 * p != k - 1 for p, k in zip(conv.padding, conv.kernel_size)):
        return f"padding {conv.padding} is not 'same'-style for kernel {conv.kernel_size}"
    return None


def _window(window: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return (window,) * dims if isinstance(window, int) else tuple(window)


def _window_of(conv: nn.Module, dilated_kernel_size: int | tuple[int, ...]) -> tuple[int, ...]:
    """The DCLS window replacing ``conv``: the given one, but size 1 where the kernel has size 1.

    A ``1 x k`` band stays a band: spreading it over a square window would change what the layer
    can express, and a position along a size-1 axis cannot move anyway.
    """
    dims = len(conv.kernel_size)
    window = _window(dilated_kernel_size, dims)
    if len(window) != dims:
        raise ValueError(f"dilated_kernel_size {dilated_kernel_size!r} has {len(window)} entries for a {dims}D conv")
    return tuple(1 if k == 1 else w for k, w in zip(conv.kernel_size, window))


def _learned_axes(window: tuple[int, ...]) -> tuple[int, ...]:
    """Axes along which positions can move (window larger than 1)."""
    return tuple(axis for axis, size in enumerate(window) if size > 1)


def dclsify(
    model: nn.Module,
    dilated_kernel_size: int | tuple[int, ...] = 17,
    kernel_count: int | None = None,
    version: str = "bilinear",
    targets: str = "depthwise",
    share: str | Callable[[str], str | None] = "stage",
    on_unsupported: str = "raise",
    include: Callable[[str, nn.Module], bool] | None = None,
) -> DclsifyReport:
    """Replace ``model``'s convolutions by DCLS layers in place.

    Args:
        model: any ``nn.Module``.
        dilated_kernel_size: window of the new layers (int or per-axis tuple); axes along which
            a kernel has size 1 keep size 1 and learn no positions (bands stay bands). An even
            window needs stride 1 (``padding='same'``) to keep the output size.
        kernel_count: elements per kernel; ``None`` chooses the paper's equal-parameter count.
        version: interpolation of the new layers.
        targets: ``"depthwise"`` (``groups == in == out``) or ``"all"`` (every ``k x k`` conv, k > 1).
        share: ``"stage"`` (positions shared by convs with the same stage prefix and role),
            ``"layer"`` (each layer owns its positions), or a function ``path -> group name``
            (``None``: not shared).
        on_unsupported: ``"raise"`` (default) or ``"skip"`` (listed in the report) for targeted
            convolutions that cannot be converted (dilated, transposed, asymmetric padding).
        include: optional filter ``(path, conv) -> bool`` applied to the targets, e.g. to keep a
            ResNet's 7x7 stem with ``targets="all"``; excluded convs are neither converted nor
            counted in the equal-parameter ``kernel_count``.

    Returns:
        :class:`DclsifyReport`. The new layers keep the replaced conv's device, dtype, stride,
        groups, bias and padding mode; the output size is unchanged.
    """
    if targets not in ("depthwise", "all"):
        raise ValueError(f"targets must be 'depthwise' or 'all', got {targets!r}")
    if on_unsupported not in ("raise", "skip"):
        raise ValueError(f"on_unsupported must be 'raise' or 'skip', got {on_unsupported!r}")
    if share == "stage":
        group_of: Callable[[str], str | None] = _stage_group
    elif share == "layer":
        group_of = lambda path: None  # noqa: E731
    elif callable(share):
        group_of = share
    else:
        raise ValueError(f"share must be 'stage', 'layer' or a callable, got {share!r}")
    interpolation = resolve_interpolation(version)

    report = DclsifyReport()
    chosen: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if isinstance(module, DclsConvNd) or not _is_target(module, targets):
            continue
        if include is not None and not include(path, module):
            continue
        reason = _unsupported(module)
        if reason is None:
            chosen[path] = module
        elif on_unsupported == "raise":
            raise ValueError(f"dclsify cannot convert {path!r}: {reason}; pass on_unsupported='skip' to leave it")
        else:
            report.skipped[path] = reason
    if not chosen:
        hint = ("; targets='all' converts every k x k convolution (dense and grouped ones too)"
                if targets == "depthwise" else "")
        raise ValueError(f"dclsify found no {targets} convolution to convert in {type(model).__name__}{hint}")

    windows = {path: _window_of(conv, dilated_kernel_size) for path, conv in chosen.items()}
    for path, conv in chosen.items():
        if any(w % 2 == 0 for w in windows[path]) and any(s != 1 for s in conv.stride):
            reason = f"even window {windows[path]} with stride {conv.stride} cannot keep the output size"
            raise ValueError(f"dclsify cannot convert {path!r}: {reason}; use an odd dilated_kernel_size")
    groups: dict[str | None, list[str]] = {}
    for path in chosen:
        groups.setdefault(group_of(path), []).append(path)
    _check_groups(groups, chosen, windows)

    # positions (+ widths) per element of each conv: one per learned axis (two with SIG)
    position_dims = {path: len(_learned_axes(w)) * (2 if interpolation.has_sigma else 1) for path, w in windows.items()}
    report.params_before = sum(p.numel() for conv in chosen.values() for p in conv.parameters())
    if kernel_count is None:
        kernel_count = _equal_parameter_count(groups, chosen, position_dims)

    for group, paths in groups.items():
        first = chosen[paths[0]]
        window = windows[paths[0]]  # _check_groups: one window per shared group
        shared = None
        if group is not None:
            dense = tuple(w for w in window if w == 1)  # axes without learned positions
            element_shape = (first.out_channels, first.in_channels // first.groups, *dense, kernel_count)
            learned = tuple(window[a] for a in _learned_axes(window))
            shared = SharedPositions(
                element_shape, learned, interpolation, device=first.weight.device, dtype=first.weight.dtype
            )
            owner_path, role = group.rsplit("/", 1)
            register_shared_positions(model.get_submodule(owner_path) if owner_path else model, role, shared)
        for path in paths:
            model.set_submodule(path, _to_dcls(chosen[path], windows[path], kernel_count, interpolation, shared))
            report.converted.append(ConvertedLayer(path, chosen[path].kernel_size, windows[path], kernel_count, group))
    report.kernel_count = kernel_count
    report.params_after = sum(
        p.numel() for p in _unique_parameters(model.get_submodule(c.path) for c in report.converted)
    )
    return report


def _stage_group(path: str) -> str | None:
    key = shared_group_key(path)
    return None if key is None else "/".join(key)


def _check_groups(groups: dict, chosen: dict, windows: dict) -> None:
    for group, paths in groups.items():
        if group is None:
            continue
        shapes = {(chosen[p].out_channels, chosen[p].in_channels // chosen[p].groups, windows[p]) for p in paths}
        if len(shapes) > 1:
            raise ValueError(
                f"convolutions sharing positions in group {group!r} differ in shape {sorted(shapes)}: "
                f"{paths}; use share='layer' or a share function that separates them"
            )


def _equal_parameter_count(groups: dict, chosen: dict, position_dims: dict[str, int]) -> int:
    """The largest count whose weights + positions (+ widths) fit in the original weights."""

    def pairs(path: str) -> int:  # (output, input) channel pairs: one weight per element each
        conv = chosen[path]
        return conv.out_channels * (conv.in_channels // conv.groups)

    original = sum(conv.weight.numel() for conv in chosen.values())
    per_element = 0  # parameters each unit of kernel_count costs, over the whole model
    for group, paths in groups.items():
        per_element += sum(pairs(p) for p in paths)  # weights
        # positions (+ widths): once per shared group (same shapes), per layer otherwise
        owners = paths[:1] if group is not None else paths
        per_element += sum(pairs(p) * position_dims[p] for p in owners)
    count = original // per_element
    if count < 1:
        raise ValueError("the original kernels are too small for even one DCLS element at equal parameter count")
    return int(count)


def _to_dcls(conv: nn.Module, window, kernel_count: int, interpolation, shared: SharedPositions | None) -> DclsConvNd:
    # "same" keeps the output size for even windows too (stride 1; dclsify rejects even + stride);
    # for odd windows w // 2 is the same padding and also works with stride.
    padding = "same" if any(w % 2 == 0 for w in window) else tuple(w // 2 for w in window)
    layer = _DCLS_BY_CONV[type(conv)](
        conv.in_channels,
        conv.out_channels,
        kernel_count,
        window,
        stride=conv.stride,
        padding=padding,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        version=interpolation,
        learned_axes=_learned_axes(window),
        shared_positions=shared,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    return layer


def _unique_parameters(modules) -> list:
    seen: dict[int, object] = {}
    for module in modules:
        for param in module.parameters():
            seen.setdefault(id(param), param)
        shared = getattr(module, "shared_positions", None)
        if shared is not None:
            for param in shared.parameters():
                seen.setdefault(id(param), param)
    return list(seen.values())
