"""Process-wide settings with thread-local overrides, as ``torch.autocast``-style context managers.

The backend in force (:func:`dcls_zoo.backends.use_backend`) and measured variant choices
(:func:`dcls_zoo.autotune.use_autotune`) are both a global value that a ``with`` block may
override for its own thread; this is that mechanism, once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["ScopedSetting"]

T = TypeVar("T")


class ScopedSetting(Generic[T]):
    """A global value, overridden within :meth:`override` blocks of the calling thread.

    Attributes:
        value: the process-wide value (what :meth:`current` returns outside every block).
    """

    def __init__(self, value: T) -> None:
        self.value = value
        self._local = threading.local()

    def current(self) -> T:
        """The innermost override of this thread, else the process-wide value."""
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else self.value

    @contextlib.contextmanager
    def override(self, value: T) -> Iterator[None]:
        """Within the block (this thread only), :meth:`current` returns ``value``."""
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(value)
        try:
            yield
        finally:
            stack.pop()
