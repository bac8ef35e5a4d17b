"""Shared helpers for the benchmark scripts: wall-clock timing and peak tensor memory.

Peak memory is measured by :class:`TensorMemoryTracker`, a ``TorchDispatchMode`` that sees every
ATen op (forward and backward) run inside it, so it works on any device, including CPU where
PyTorch keeps no allocator statistics. It counts the bytes of every tensor storage an op creates
and uncounts them when the storage is freed, so tensors autograd saves for backward stay counted
until backward releases them. The result is deterministic (it does not depend on the allocator's
caching or on the OS), which makes it suitable for comparing implementations.

What it does not see: memory a kernel allocates internally without returning it as a tensor
(scratch buffers inside one ATen op), storages grown in place by ``resize_``, and anything
allocated before the tracker was entered (the inputs), which is excluded on purpose.

Run ``python benchmarks/common.py`` to self-check the tracker.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import dcls_zoo
from dcls_zoo.machine import machine_description  # noqa: F401  (the scripts import it from here)

__all__ = [
    "MIB",
    "TensorMemoryTracker",
    "peak_memory_bytes",
    "best_time_seconds",
    "interleaved_best_seconds",
    "check_memory_tracker",
    "machine_description",
]

MIB = 2**20


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    """Yield the tensors in a (nested) structure of op arguments or results."""
    for leaf in tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            yield leaf


def _storage(tensor: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage, or ``None`` for layouts without one (sparse, nested, meta...)."""
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        return None
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


class TensorMemoryTracker(TorchDispatchMode):
    """Running total and peak of the bytes of live tensor storages created inside the context.

    A storage is counted when an op first returns a tensor backed by it, unless one of the op's
    inputs is backed by the same storage (views and in-place ops allocate nothing). It is
    uncounted by a finalizer on the storage object: PyTorch keeps one Python object per storage
    alive for as long as the storage itself lives, so the finalizer runs exactly when the memory
    is released, whoever held the last reference (a Python variable, an autograd node, ``.grad``).

    Attributes:
        current: bytes of counted storages alive now.
        peak: largest value ``current`` reached.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        # storage identity (its C++ pointer, stable while it lives) -> counted bytes
        self._live: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch API)
        kwargs = kwargs or {}
        inputs = (_storage(t) for t in _tensors((args, kwargs)))
        input_storages = {storage._cdata for storage in inputs if storage is not None}
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            storage = _storage(tensor)
            if storage is not None and storage._cdata not in input_storages:
                self._allocate(storage)
        return out

    def _allocate(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        if key in self._live or storage.nbytes() == 0:
            return
        self._live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors allocated by ``fn()`` and alive at the same time.

    Tensors that exist before the call (inputs, module buffers) are not counted; tensors that
    ``fn`` leaves behind (e.g. ``.grad``) are counted while they are alive during the call.
    """
    gc.collect()  # free garbage from earlier runs so it cannot be reused mid-measurement
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak


def add_run_arguments(parser: argparse.ArgumentParser, default_threads: int) -> None:
    """The options every side-by-side benchmark takes: --quick, --threads, --repeats, --device."""
    parser.add_argument("--quick", action="store_true", help="one repeat (smoke test)")
    parser.add_argument("--threads", type=int, default=default_threads)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; the best counts)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--default-paths", action="store_true",
                        help="run the DCLS layers' default CPU convolution paths: no measured variant choices "
                             "(dcls_zoo.autotune, on by default here as in configs/presets/cpu.yaml)")


def apply_run_arguments(args: argparse.Namespace) -> tuple[torch.device, int]:
    """Set the thread count, the seed and measured variant choices; returns the device and the
    number of repeats."""
    torch.set_num_threads(args.threads)
    dcls_zoo.set_autotune(not args.default_paths)
    torch.manual_seed(0)
    return torch.device(args.device), args.repeats or (1 if args.quick else 3)


def best_time_seconds(
    fn: Callable[[], object], repeats: int, warmup: int = 1, min_repeat_seconds: float = 0.02
) -> float:
    """Best (minimum) wall-clock seconds per call of ``fn`` over ``repeats`` repeats.

    The minimum is the least noisy estimate of the cost of the code itself; the other repeats
    only add interference from the rest of the machine. Fast functions are called several times
    per repeat so that each repeat lasts at least ``min_repeat_seconds`` and timer resolution
    and per-call jitter do not dominate.
    """
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    single = time.perf_counter() - start
    calls = max(1, math.ceil(min_repeat_seconds / max(single, 1e-9)))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def interleaved_best_seconds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds per call of each function, calling them in turn ``repeats`` times, every other
    round in reverse order: what one step leaves behind (caches, freed pages) can slow the next,
    so no function always runs after the same other one. Each is called once first, untimed
    (allocator, oneDNN primitive caches, kernel caches, compilation)."""
    for function in functions.values():
        function()
    best = {name: math.inf for name in functions}
    names = list(functions)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            function = functions[name]
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def check_memory_tracker() -> None:
    """Assert that the tracker counts known allocations exactly, saved tensors included.

    Raises:
        AssertionError: if the tracker misses or miscounts an allocation.
    """
    n = 1000
    nbytes = 4 * n  # float32

    # a plain allocation, counted exactly while alive and released when deleted
    with TensorMemoryTracker() as tracker:
        kept = torch.empty(n)
        view = kept[1:]  # views allocate nothing
        kept.mul_(0)  # nor do in-place ops
        assert tracker.current == nbytes, (tracker.current, nbytes)
        del kept, view
        assert tracker.current == 0, tracker.current
    assert tracker.peak == nbytes, (tracker.peak, nbytes)

    # a tensor autograd saves (exp saves its result) must stay counted though Python dropped it:
    # peak = saved result + incoming gradient (n each) + two scalars (loss and its seed gradient)
    leaf = torch.randn(n, requires_grad=True)
    with TensorMemoryTracker() as tracker:
        loss = leaf.exp().sum()
        assert tracker.current == nbytes + 4, (tracker.current, nbytes + 4)
        loss.backward()
    expected = 2 * nbytes + 2 * 4
    assert tracker.peak == expected, (tracker.peak, expected)


if __name__ == "__main__":
    check_memory_tracker()
    print("memory tracker self-check passed")
