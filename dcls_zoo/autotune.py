"""One-off measured choices between exact ways of running the same CPU convolution.

oneDNN's depthwise kernels do not grow smoothly in cost with the window, and they rank the same
paths differently on AVX2 and AVX-512 CPUs (measured on 96 channels of 56x56: a 5x5 weight
gradient through the batch-folded convolution is 1.6x slower than oneDNN's own on an AVX2 EPYC,
a 7x7 one 1.8x faster; on an AVX-512 Xeon a 13x13 forward was slower than a 15x15 one). No fixed rule is
right on both, so, as cuDNN's benchmark mode does, the first call of each shape times every
candidate (in up to three alternating rounds) and the fastest is kept for the rest of the process.

The candidates of one choice compute the same result up to floating-point rounding (their
sums run in different orders), so a measured choice makes results depend on the machine's
timing, exactly as ``torch.backends.cudnn.benchmark`` does; and like it, measuring is off unless
asked for. By default it follows ``torch.backends.cudnn.benchmark``, the switch users already
set for speed (Lightning's ``Trainer(benchmark=True)``, ``configs/presets/cpu.yaml``); a run
that must resume bit for bit leaves it off. :func:`set_autotune` overrides it. Even when on,
nothing is measured, and the default path runs, when:

- ``torch.use_deterministic_algorithms(True)`` is on (Lightning's ``Trainer(deterministic=True)``);
- the call is small (under :data:`MIN_MACS` multiply-adds), where a wrong choice costs less than
  measuring would;
- ``torch.compile``/``torch.export`` is tracing.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import torch

from .settings import ScopedSetting

__all__ = [
    "MIN_MACS",
    "Measurement",
    "active",
    "autotune_enabled",
    "choose",
    "clear",
    "measurements",
    "set_autotune",
    "use_autotune",
]

# Below this many multiply-adds per call a convolution takes well under a millisecond on one
# core, and measuring its candidates would cost more than any choice could save.
MIN_MACS = 50_000_000

# A candidate whose first run takes this many times the best one's is not run again.
_ABANDON_RATIO = 2.0
_REPEATS = 3
# Another candidate replaces the default only when this much faster: timing noise on a shared
# machine (10-15% between identical runs on the 2-core CI machines) must not swap in a path
# that is no better.
_MARGIN = 0.20


@dataclass(frozen=True)
class Measurement:
    """The outcome of one measured choice: what was timed, in seconds (best run), the default
    path and the winner."""

    key: Hashable
    seconds: Mapping[str, float]
    default: str
    chosen: str


_lock = threading.Lock()
_chosen: dict[Hashable, str] = {}
_measurements: list[Measurement] = []
# set_autotune's value (None: follow torch.backends.cudnn.benchmark), or a use_autotune block's
_setting: ScopedSetting[bool | None] = ScopedSetting(None)


def _checked(enabled: object, name: str, allow_none: bool) -> bool | None:
    if isinstance(enabled, bool) or (allow_none and enabled is None):
        return enabled
    expected = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"{name} expects {expected}, got {enabled!r}")


def set_autotune(enabled: bool | None) -> None:
    """Measure the CPU convolution variants on first use of each shape (``True``), always run the
    default paths (``False``), or follow ``torch.backends.cudnn.benchmark`` (``None``, the default)."""
    _setting.value = _checked(enabled, "set_autotune", allow_none=True)


def autotune_enabled() -> bool:
    """Whether measured choices are on: the innermost :func:`use_autotune`, else
    :func:`set_autotune`, else ``torch.backends.cudnn.benchmark``."""
    enabled = _setting.current()
    return torch.backends.cudnn.benchmark if enabled is None else enabled


def use_autotune(enabled: bool) -> contextlib.AbstractContextManager:
    """Within the block (this thread), measured choices are on or off."""
    return _setting.override(_checked(enabled, "use_autotune", allow_none=False))


def measurements() -> list[Measurement]:
    """Every choice measured in this process so far, oldest first."""
    with _lock:
        return list(_measurements)


def clear() -> None:
    """Forget every measured choice (they are measured again on next use)."""
    with _lock:
        _chosen.clear()
        _measurements.clear()


def active() -> bool:
    """Whether measured choices apply now at all (else every call takes its default path):
    :func:`autotune_enabled` and no deterministic algorithms. Callers may skip building their
    candidates when it is ``False``."""
    return autotune_enabled() and not torch.are_deterministic_algorithms_enabled()


def _may_measure(macs: int) -> bool:
    return macs >= MIN_MACS and not torch.compiler.is_compiling()


def _time_candidates(candidates: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Best seconds of each candidate over rounds that run them in turn, so that a slow moment of
    a shared machine hits them alike. The first run of each also builds oneDNN's primitive; a
    candidate whose first run is already far slower than the best is not run again."""
    seconds: dict[str, float] = {}
    for round_index in range(_REPEATS):
        for name, run in candidates.items():
            if round_index and seconds[name] > _ABANDON_RATIO * min(seconds.values()):
                continue
            start = time.perf_counter()
            run()
            seconds[name] = min(seconds.get(name, math.inf), time.perf_counter() - start)
    return seconds


def choose(key: Hashable, candidates: Mapping[str, Callable[[], object]], default: str, macs: int) -> str:
    """The name of the fastest candidate for ``key``, measured on the first call that may measure.

    Args:
        key: everything the timing depends on (shapes, strides, dtype, layout, thread count).
        candidates: name -> a call running that path once on representative tensors; the calls
            must not record autograd history (they run as given).
        default: the candidate used when nothing may be measured (and the first one timed).
        macs: multiply-adds of one call, compared with :data:`MIN_MACS`.

    Returns:
        A key of ``candidates``.
    """
    if not active() or len(candidates) == 1:
        return default  # also where an earlier, measuring call of this shape chose another
    with _lock:
        chosen = _chosen.get(key)
    if chosen is not None:
        return chosen
    if not _may_measure(macs):
        return default
    ordered = {default: candidates[default], **{n: c for n, c in candidates.items() if n != default}}
    with torch.no_grad():
        seconds = _time_candidates(ordered)
    chosen = min(seconds, key=seconds.__getitem__)
    if seconds[default] <= seconds[chosen] * (1 + _MARGIN):
        chosen = default
    with _lock:
        _chosen[key] = chosen
        _measurements.append(Measurement(key, seconds, default, chosen))
    return chosen
