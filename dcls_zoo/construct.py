"""Kernel construction for DCLS: weights + real-valued positions -> dense convolution kernel.

Every interpolation DCLS uses (bilinear, triangle with a learnable width, Gaussian with a
learnable sigma) has a footprint that is a product of one-dimensional footprints, one per kernel
axis, and so is its normalisation over the window. The dense kernel is therefore

    K[b, u_0, ..., u_{d-1}] = sum_k w[b, k] * A_0[b, k, u_0] * ... * A_{d-1}[b, k, u_{d-1}]

where ``A_i[b, k, :]`` is element ``k``'s normalised footprint along axis ``i`` (a vector of the
axis' window size). In 2D this is ``K[b] = A_0[b]^T diag(w[b]) A_1[b]``: one batched matmul,
with intermediates of size ``B * K * s`` instead of the ``B * K * s^d`` (times ``d``) tensors
the official implementation materialises (:class:`DenseFootprints`, used by the triangle and
Gaussian profiles). A bilinear element touches only two taps per axis, so its ``2^d`` corner
values are scattered straight into the kernel (:class:`TapFootprints`), with work independent
of the window size.

Conventions (unlike the official 2D v1/triangle/gauss code, which stores the width first):
``positions[i]`` is the offset along kernel axis ``i`` in PyTorch's order (2D: ``positions[0]``
is the row / height, ``positions[1]`` the column / width), centred on the window, so the
footprint of a position ``p`` along an axis of size ``s`` is centred on index ``p + s // 2``.

The functions here are pure: they hold no state, never check module arguments and work for any
batch shape, so models can share positions across layers and build the factors once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Footprints",
    "DenseFootprints",
    "TapFootprints",
    "Interpolation",
    "INTERPOLATIONS",
    "resolve_interpolation",
    "axis_footprints",
    "kernel_from_footprints",
    "construct_kernel",
    "position_bounds",
    "clamp_positions_",
    "init_positions_",
    "autocast_dtype",
    "full_precision",
]

# Added to each axis' normaliser so that an element whose footprint lies entirely outside the
# window (possible only for unclamped positions) yields zeros instead of NaN. The official code
# adds the same constant to the (product) normaliser over the whole window.
_NORM_EPS = 1e-7


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs convolutions in on ``device_type`` now, or ``None`` when
    it is off there (or the device has no autocast at all, e.g. ``meta``)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def full_precision(like: Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast leaves ``like``'s device alone.

    Kernels are built in the parameters' precision: bf16 has 8 bits of mantissa, too few for
    positions, and autocast would otherwise run the construction's matmul in bf16.
    """
    device_type = like.device.type
    if autocast_dtype(device_type) is not None:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _triangle(distance: Tensor, width: Tensor) -> Tensor:
    return torch.relu(width - distance.abs())


# Gaussian exponents below this give exactly zero. Far below what any footprint keeps (its peak,
# on the grid point nearest its centre, is at least exp(-(1/2)^2 / (2 * 0.27^2)) ~ 0.18, and values
# under eps / 2 of the peak are dropped): it only spares exp the underflow into subnormals, which
# is 17x slower than the ordinary path on the CPU.
_GAUSS_EXPONENT_FLOOR = -64.0


def _gauss(distance: Tensor, width: Tensor) -> Tensor:
    exponent = -0.5 * (distance / width).square()
    kept = exponent >= _GAUSS_EXPONENT_FLOOR
    # masked twice with the one boolean tensor autograd saves (a clamp would save a float copy)
    return torch.where(kept, torch.exp(torch.where(kept, exponent, 0.0)), 0.0)


def _window_grid(sizes: Sequence[int], like: Tensor) -> tuple[Tensor, Tensor]:
    """Centres ``(d, 1, ..., 1)`` and index grid ``(d, 1, ..., 1, max(sizes))`` for ``like``'s rank."""
    shape = (len(sizes),) + (1,) * (like.dim() - 1)
    centres = torch.tensor([s // 2 for s in sizes], dtype=like.dtype, device=like.device).view(shape)
    grid = torch.arange(max(sizes), dtype=like.dtype, device=like.device).expand(*shape, max(sizes))
    return centres, grid


class Footprints:
    """Every element's normalised footprint along every kernel axis, ready to meet the weights.

    Built once from positions (and widths) by :func:`axis_footprints`, then combined with one or
    more weight tensors by :meth:`kernel` (shared positions: one ``Footprints`` per stage, one
    :meth:`kernel` call per block).
    """

    sizes: tuple[int, ...]

    def kernel(self, weight: Tensor) -> Tensor:
        """``(*batch, K)`` weights -> ``(*batch, *sizes)`` dense kernel."""
        raise NotImplementedError

    def dense(self) -> list[Tensor]:
        """Per-axis footprints as dense tensors: ``d`` tensors ``(*batch, K, sizes[i])``."""
        raise NotImplementedError

    def graph_node(self) -> torch.autograd.graph.Node | None:
        """The autograd node the footprints hang on (``None``: they hold no graph of their own).

        A backward pass through it frees the graph, after which the footprints must not be
        combined with weights again (see :meth:`dcls_zoo.shared.SharedPositions.footprints`).
        """
        return None

    def support(self) -> tuple[tuple[int, int], ...]:
        """Per axis, the first and last window index that any element reaches.

        Outside this box every footprint value and every derivative of one by a position or
        width is exactly zero, so the kernel there is zero and its gradient is never needed:
        a convolution may drop those taps (:func:`dcls_zoo.backends.crop_to_support`). Reading
        it synchronises with the device once; the result is kept.
        """
        cached = self.__dict__.get("_support_cache")
        if cached is None:
            cached = self.__dict__["_support_cache"] = self._support()
        return cached

    def _support(self) -> tuple[tuple[int, int], ...]:
        raise NotImplementedError


class DenseFootprints(Footprints):
    """Footprints stored densely along each axis (any profile), combined by a batched matmul.

    ``K[b] = sum_k w[b, k] A_0[b, k, :] x ... x A_{d-1}[b, k, :]``: the first ``d - 1`` factors
    meet the weights by broadcasting (size ``B * K * s_0 * ... * s_{d-2}``), the last one by a
    batched matmul over ``K``. In 2D that is ``K[b] = A_0[b]^T diag(w[b]) A_1[b]``.
    """

    def __init__(self, factors: Sequence[Tensor]) -> None:
        self.factors = list(factors)
        self.sizes = tuple(f.shape[-1] for f in self.factors)

    def dense(self) -> list[Tensor]:
        return self.factors

    def graph_node(self) -> torch.autograd.graph.Node | None:
        return self.factors[0].grad_fn

    def _support(self) -> tuple[tuple[int, int], ...]:
        # A profile's derivatives vanish wherever its value does (gauss underflow, the flat
        # part of the triangle), so the non-zero values bound everything.
        reached = torch.cat([f.detach().ne(0).reshape(-1, f.shape[-1]).any(0) for f in self.factors]).tolist()
        support, start = [], 0
        for size in self.sizes:
            indices = [i for i, hit in enumerate(reached[start : start + size]) if hit]
            support.append((indices[0], indices[-1]) if indices else (0, size - 1))
            start += size
        return tuple(support)

    def kernel(self, weight: Tensor) -> Tensor:
        *leading, last = self.factors
        batch_shape = torch.broadcast_shapes(weight.shape[:-1], *(f.shape[:-2] for f in self.factors))
        count = weight.shape[-1]
        left = weight.unsqueeze(-1)
        for factor in leading:
            left = (left.unsqueeze(-1) * factor.unsqueeze(-2)).flatten(-2)
        left = left.expand(*batch_shape, count, left.shape[-1]).reshape(-1, count, left.shape[-1])
        right = last.expand(*batch_shape, *last.shape[-2:]).reshape(-1, count, last.shape[-1])
        return torch.bmm(left.transpose(1, 2), right).reshape(*batch_shape, *self.sizes)


def _outer(factors: Sequence[Tensor]) -> Tensor:
    """Products of one entry of each ``(2, *batch, K)`` factor, all combinations: ``(2^d, *batch, K)``."""
    product = factors[0]
    for factor in factors[1:]:
        product = (product.unsqueeze(1) * factor.unsqueeze(0)).flatten(0, 1)
    return product


class _TapKernel(torch.autograd.Function):
    """``(weight, positions) -> kernel`` for bilinear taps, with a hand-written backward.

    The taps and their values are computed once, without autograd, when the footprints are
    built; here each element's ``2^d`` corners are scattered into the kernel. The backward
    gathers the kernel's gradient ``G`` at the corners: ``dW = sum_c G_c coef_c`` and, since a
    tap's value is ``1 - r`` or ``r`` with ``dr/dp = 1``,
    ``dp_i = w sum_c G_c (-1 or +1) prod_{j != i} value_j``. Autograd over the same arithmetic
    builds dozens of tiny nodes that cost more than the work. The corner dimension leads so that
    every elementwise op runs over the long, contiguous ``(*batch, K)`` block.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, positions: Tensor, footprints: "TapFootprints") -> Tensor:
        coefficient = _outer(footprints.values.unbind(0))  # (2^d, *batch, K)
        value = coefficient * weight
        batch_shape = value.shape[1:-1]
        index = footprints.corner_index.expand_as(value)
        # scatter along the flattened window: (*batch, 2^d * K)
        flat_index = index.movedim(0, -2).reshape(*batch_shape, -1)
        kernel = value.new_zeros(*batch_shape, math.prod(footprints.sizes))
        kernel.scatter_add_(-1, flat_index, value.movedim(0, -2).reshape(*batch_shape, -1))
        ctx.save_for_backward(weight, positions, flat_index, coefficient)
        ctx.footprints, ctx.positions_shape = footprints, positions.shape
        return kernel.view(*batch_shape, *footprints.sizes)

    @staticmethod
    def backward(ctx, grad_kernel: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        weight, positions, flat_index, coefficient = ctx.saved_tensors
        footprints = ctx.footprints
        if torch.is_grad_enabled():
            # create_graph=True (gradient penalties, MAML): the same arithmetic through autograd,
            # so the gradients can be differentiated again.
            return _differentiable_tap_backward(ctx, weight, positions, footprints, grad_kernel)
        batch_shape = flat_index.shape[:-1]
        grad_flat = grad_kernel.reshape(*batch_shape, -1).gather(-1, flat_index)
        grad_corners = grad_flat.view(*batch_shape, coefficient.shape[0], -1).movedim(-2, 0).contiguous()
        grad_weight = grad_positions = None
        if ctx.needs_input_grad[0]:
            grad_weight = (grad_corners * coefficient).sum(0).sum_to_size(weight.shape)
        if ctx.needs_input_grad[1]:
            values = list(footprints.values.unbind(0))
            per_axis = []
            for axis in range(len(values)):
                derivative = _outer(values[:axis] + [footprints.slopes[axis]] + values[axis + 1 :])
                per_axis.append((grad_corners * derivative).sum(0) * weight)
            grad_positions = torch.stack(per_axis).sum_to_size(ctx.positions_shape)
        return grad_weight, grad_positions, None


def _differentiable_tap_kernel(weight: Tensor, positions: Tensor, footprints: "TapFootprints") -> Tensor:
    """:class:`_TapKernel`'s forward in autograd ops: the tap values move with the positions at
    the footprints' slopes (``-1``/``+1``), exactly the hand-written derivative."""
    moved = (positions - positions.detach()).unsqueeze(1) * footprints.slopes  # (d, 2, *batch, K)
    coefficient = _outer((footprints.values + moved).unbind(0))
    value = coefficient * weight
    batch_shape = value.shape[1:-1]
    flat_index = footprints.corner_index.expand_as(value).movedim(0, -2).reshape(*batch_shape, -1)
    kernel = value.new_zeros(*batch_shape, math.prod(footprints.sizes))
    kernel = kernel.scatter_add(-1, flat_index, value.movedim(0, -2).reshape(*batch_shape, -1))
    return kernel.view(*batch_shape, *footprints.sizes)


def _differentiable_tap_backward(ctx, weight: Tensor, positions: Tensor, footprints: "TapFootprints",
                                 grad_kernel: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
    wanted = [t for t, needed in zip((weight, positions), ctx.needs_input_grad[:2]) if needed]
    kernel = _differentiable_tap_kernel(weight, positions, footprints)
    grads = iter(torch.autograd.grad(kernel, wanted, grad_kernel, create_graph=True, allow_unused=True))
    grad_weight = next(grads) if ctx.needs_input_grad[0] else None
    grad_positions = next(grads) if ctx.needs_input_grad[1] else None
    return grad_weight, grad_positions, None


class TapFootprints(Footprints):
    """Footprints with two taps per axis (bilinear), combined by scattering ``2^d`` corners.

    Attributes:
        positions: ``(d, *batch, K)`` the positions the taps were computed from (gradients
            flow back to them).
        taps: ``(d, 2, *batch, K)`` int64 indices of the two taps along each axis.
        values: ``(d, 2, *batch, K)`` the taps' weights (summing to one per element and axis).
        slopes: ``(d, 2, 1, ..., 1)`` derivative of the two tap values by the position: ``(-1, 1)``,
            or ``(0, 0)`` along size-1 axes, whose single tap never moves.

    Work and memory are ``O(B * K * 2^d)``, independent of the window size. CUDA's scatter-add is
    not deterministic, so under ``torch.use_deterministic_algorithms(True)`` on a GPU the kernel
    is built through :class:`DenseFootprints` instead.
    """

    def __init__(self, positions: Tensor, taps: Tensor, values: Tensor, slopes: Tensor, sizes: Sequence[int]):
        self.positions, self.taps, self.values, self.slopes = positions, taps, values, slopes
        self.sizes = tuple(sizes)
        # flat index of each corner in the kernel, (2^d, *batch, K); shared by every kernel() call
        strides = [math.prod(self.sizes[axis + 1 :]) for axis in range(len(self.sizes))]
        self.corner_index = _outer_sum([taps[axis] * stride for axis, stride in enumerate(strides)])

    def kernel(self, weight: Tensor) -> Tensor:
        if weight.is_cuda and torch.are_deterministic_algorithms_enabled():
            return DenseFootprints(self.dense()).kernel(weight)
        return _TapKernel.apply(weight, self.positions, self)

    def _support(self) -> tuple[tuple[int, int], ...]:
        # Both taps count, even one whose value is zero (an integer position): the position's
        # gradient reads the kernel's gradient there.
        flat = self.taps.flatten(2)
        bounds = torch.stack((flat[:, 0].amin(-1), flat[:, 1].amax(-1)), dim=-1).tolist()
        return tuple((first, last) for first, last in bounds)

    def dense(self) -> list[Tensor]:
        # Axis i's footprints are 1D "kernels" of unit-weight single elements, one per element.
        dense = []
        for axis, size in enumerate(self.sizes):
            single = TapFootprints(
                self.positions[axis : axis + 1].unsqueeze(-1),
                self.taps[axis : axis + 1].unsqueeze(-1),
                self.values[axis : axis + 1].unsqueeze(-1),
                self.slopes[axis : axis + 1].unsqueeze(-1),
                (size,),
            )
            ones = self.values.new_ones(()).expand(*self.positions.shape[1:], 1)
            dense.append(_TapKernel.apply(ones, single.positions, single))
        return dense


def _outer_sum(terms: Sequence[Tensor]) -> Tensor:
    """Sums of one entry of each ``(2, *batch, K)`` term, all combinations: ``(2^d, *batch, K)``."""
    total = terms[0]
    for term in terms[1:]:
        total = (total.unsqueeze(1) + term.unsqueeze(0)).flatten(0, 1)
    return total


class Interpolation:
    """One interpolation scheme: how an element's per-axis footprints are built.

    Attributes:
        name: canonical name (``"bilinear"``, ``"triangle"``, ``"gauss"``).
        sigma_offset: the effective width is ``|SIG| + sigma_offset`` (``None``: no ``SIG``).
        sigma_init: the value ``SIG`` is initialised to.
    """

    def __init__(self, name: str, sigma_offset: float | None = None, sigma_init: float = 0.0) -> None:
        self.name = name
        self.sigma_offset = sigma_offset
        self.sigma_init = sigma_init

    @property
    def has_sigma(self) -> bool:
        return self.sigma_offset is not None

    def footprints(self, positions: Tensor, sigmas: Tensor | None, sizes: tuple[int, ...]) -> Footprints:
        """``(d, *batch, K)`` positions (and widths) -> the elements' :class:`Footprints`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Interpolation({self.name!r})"


class _BilinearInterpolation(Interpolation):
    """Bilinear elements as two taps per axis (the paper's Algorithm 1).

    Along an axis of size ``s`` the element at index ``q = p + s // 2`` puts ``1 - r`` on tap
    ``i`` and ``r`` on tap ``i + 1``, with ``i = min(floor(q), s - 2)`` and ``r = q - i``. The
    taps lie in the window and sum to one, so no renormalisation is needed, and their values
    equal the hat function ``max(0, 1 - |u - q|)`` of the official v1. Choosing the lower tap by
    ``floor`` gives a position gradient at integer positions too (the hat function's is zero
    there), so an element clamped onto the window's edge can move back in. Positions outside the
    window act as if clamped onto its edge, with the edge's gradient.
    """

    def footprints(self, positions: Tensor, sigmas: Tensor | None, sizes: tuple[int, ...]) -> TapFootprints:
        with torch.no_grad():  # _TapKernel differentiates through these by hand
            centres, _ = _window_grid(sizes, positions)
            last = torch.tensor([s - 1 for s in sizes], dtype=positions.dtype, device=positions.device)
            last = last.view_as(centres)
            index = positions + centres
            # nan_to_num: a NaN position must not become an out-of-range index; its values stay
            # NaN, so the kernel shows it (the layers refuse non-finite positions before this).
            lower = torch.minimum(index.floor(), last - 1).clamp_(min=0).nan_to_num_(0.0)
            movable = (last > 0).to(positions.dtype)  # size-1 axes have one tap and no gradient
            fraction = (index - lower).clamp_(0.0, 1.0).mul_(movable)
            taps = torch.stack((lower, torch.minimum(lower + 1, last)), dim=1).long()
            values = torch.stack((1.0 - fraction, fraction), dim=1)
            slopes = torch.stack((-movable, movable), dim=1)
        return TapFootprints(positions, taps, values, slopes, sizes)


def _drop_below_resolution(footprint: Tensor) -> Tensor:
    """Zero every footprint value below half a unit in the last place of its axis' peak.

    Such a value changes the element's contribution nowhere it matters: the contribution's
    largest entry is the product of the axes' peaks, and no fp32 sum that includes it can
    register a term under half its ulp. Dropping them removes two costs that are not
    arithmetic: a Gaussian tail never reaches zero by itself, so without this its footprint
    covers the whole window and the support crop of :func:`dcls_zoo.backends.crop_to_support`
    cannot apply (a fresh 23x23 Gaussian layer now convolves about 9x9 taps); and its far tail
    holds subnormal floats (``exp(-88)`` and below in fp32), which the Intel cores measured
    multiply tens of times slower than normal ones. The threshold follows the dtype, so fp64
    references are kept to 1e-16.

    Args:
        footprint: ``(..., window)`` non-negative profile values along one axis.

    Returns:
        The same values where at least ``eps / 2`` times the axis' peak, else exactly zero
        (and so is their gradient).
    """
    resolution = torch.finfo(footprint.dtype).eps / 2
    peak = footprint.detach().amax(-1, keepdim=True)
    return torch.where(footprint >= peak * resolution, footprint, 0.0)


class _ProfileInterpolation(Interpolation):
    """Elements with a learnable-width profile ``profile(distance, width)``, renormalised per axis."""

    def __init__(self, name: str, profile: Callable[[Tensor, Tensor], Tensor], sigma_offset: float, sigma_init: float):
        super().__init__(name, sigma_offset, sigma_init)
        self.profile = profile

    def footprints(self, positions: Tensor, sigmas: Tensor | None, sizes: tuple[int, ...]) -> DenseFootprints:
        if sigmas is None:
            raise ValueError(f"interpolation {self.name!r} needs sigmas, got None")
        centres, grid = _window_grid(sizes, positions)
        # all axes at once on the largest axis' grid: (d, *batch, K, max(sizes))
        distance = grid - (positions + centres).unsqueeze(-1)
        width = (sigmas.abs() + self.sigma_offset).unsqueeze(-1)
        footprint = _drop_below_resolution(self.profile(distance, width))
        if len(set(sizes)) > 1:  # zero the grid points past each shorter axis' end
            footprint = footprint * (grid < torch.tensor(sizes, device=grid.device).view(centres.shape + (1,)))
        footprint = footprint / (footprint.sum(-1, keepdim=True) + _NORM_EPS)
        return DenseFootprints([footprint[axis, ..., :size] for axis, size in enumerate(sizes)])


# Registry of interpolations. Aliases map the official package's version names onto ours:
# "v0" and "v1" are both bilinear (in the official code they differ in axis order, and in that
# v0 does not renormalise, which changes nothing for positions inside the window); "max" is the
# official name of the triangle.
INTERPOLATIONS: dict[str, Interpolation] = {
    "bilinear": _BilinearInterpolation("bilinear"),
    "triangle": _ProfileInterpolation("triangle", _triangle, sigma_offset=1.0, sigma_init=0.0),
    "gauss": _ProfileInterpolation("gauss", _gauss, sigma_offset=0.27, sigma_init=0.23),
}
_ALIASES = {"v0": "bilinear", "v1": "bilinear", "max": "triangle"}


def resolve_interpolation(version: str | Interpolation) -> Interpolation:
    """Return the :class:`Interpolation` named ``version`` (canonical name or official alias)."""
    if isinstance(version, Interpolation):
        return version
    if not isinstance(version, str):
        raise TypeError(f"version must be a string, got {type(version).__name__}")
    name = _ALIASES.get(version, version)
    if name not in INTERPOLATIONS:
        known = sorted([*INTERPOLATIONS, *_ALIASES])
        raise ValueError(f"unknown version {version!r}; expected one of {known}")
    return INTERPOLATIONS[name]


def position_bounds(window: int) -> tuple[int, int]:
    """Range ``[low, high]`` of centred positions whose footprint centre lies in the window.

    For an axis of size ``window`` the centred position ``p`` maps to index ``p + window // 2``,
    so the bounds are ``(-(window // 2), window - 1 - window // 2)``. For odd sizes this is the
    official ``±(window // 2)``; for even sizes the official upper bound lies one past the window.
    """
    centre = window // 2
    return -centre, window - 1 - centre


@torch.no_grad()
def clamp_positions_(positions: Tensor, dilated_kernel_size: Sequence[int]) -> Tensor:
    """Clamp ``positions`` ``(d, ...)`` in place to :func:`position_bounds` per axis; returns it."""
    if positions.shape[0] != len(dilated_kernel_size):
        raise ValueError(
            f"positions have {positions.shape[0]} axes, dilated_kernel_size has {len(dilated_kernel_size)}"
        )
    for axis, window in enumerate(dilated_kernel_size):
        positions[axis].clamp_(*position_bounds(window))
    return positions


@torch.no_grad()
def init_positions_(
    positions: Tensor, sigmas: Tensor | None, dilated_kernel_size: Sequence[int], version: str | Interpolation
) -> None:
    """The official initialisation, in place: ``P ~ N(0, 0.5)`` clamped into the window, and
    ``SIG`` (if any) at the interpolation's initial value (0 for triangle, 0.23 for gauss)."""
    positions.normal_(0.0, 0.5)
    clamp_positions_(positions, dilated_kernel_size)
    if sigmas is not None:
        sigmas.fill_(resolve_interpolation(version).sigma_init)


def axis_footprints(
    positions: Tensor,
    sigmas: Tensor | None,
    dilated_kernel_size: Sequence[int],
    version: str | Interpolation = "gauss",
) -> list[Tensor]:
    """Normalised per-axis footprints of every kernel element.

    Args:
        positions: ``(d, *batch, K)`` centred positions, ``positions[i]`` along kernel axis ``i``.
        sigmas: ``(d, *batch, K)`` raw width parameters ``SIG`` for triangle/gauss
            (effective width ``|SIG| + offset``), ``None`` for bilinear.
        dilated_kernel_size: the window size along each of the ``d`` axes.
        version: interpolation name or :class:`Interpolation`.

    Returns:
        :class:`Footprints`; ``.dense()[i]`` has shape ``(*batch, K, dilated_kernel_size[i])``
        and sums to one along its last dimension (for elements whose footprint touches the window).
    """
    if positions.shape[0] != len(dilated_kernel_size):
        raise ValueError(
            f"positions have {positions.shape[0]} axes, dilated_kernel_size has {len(dilated_kernel_size)}"
        )
    with full_precision(positions):
        return resolve_interpolation(version).footprints(positions, sigmas, tuple(dilated_kernel_size))


def kernel_from_footprints(weight: Tensor, footprints: Footprints) -> Tensor:
    """Dense kernel ``sum_k weight[..., k] * prod_i footprint_i[..., k, u_i]``.

    Args:
        weight: ``(*batch, K)`` element weights.
        footprints: from :func:`axis_footprints`; their batch dimensions broadcast against
            ``weight``'s (positions shared by a stage may have size-1 batch dimensions).

    Returns:
        ``(*batch, *sizes)``, in ``weight``'s dtype also under autocast.
    """
    with full_precision(weight):
        return footprints.kernel(weight)


def construct_kernel(
    weight: Tensor,
    positions: Tensor,
    sigmas: Tensor | None,
    dilated_kernel_size: Sequence[int],
    version: str | Interpolation = "gauss",
) -> Tensor:
    """Build the dense DCLS kernel from weights, positions and (optionally) widths.

    Args:
        weight: ``(*batch, K)``; for a convolution ``(C_out, C_in / groups, K)``.
        positions: ``(d, *batch, K)``, centred, ``positions[i]`` along kernel axis ``i``.
        sigmas: ``(d, *batch, K)`` for triangle/gauss, ``None`` for bilinear.
        dilated_kernel_size: ``d`` window sizes.
        version: ``"bilinear"`` (``"v0"``, ``"v1"``), ``"triangle"`` (``"max"``) or ``"gauss"``.

    Returns:
        ``(*batch, *dilated_kernel_size)``, differentiable in all three inputs.
    """
    footprints = axis_footprints(positions, sigmas, dilated_kernel_size, version)
    return kernel_from_footprints(weight, footprints)
