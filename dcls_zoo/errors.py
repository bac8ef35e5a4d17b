"""dcls-zoo's errors: one root, :class:`DclsZooError`, each error also under the built-in base its
callers already catch (``ValueError`` for a bad file, ``RuntimeError`` for a failed fetch or upload,
``ConnectionError`` for no network)::

    try:
        model = dcls_zoo.create_model("hf-hub:org/name", pretrained=True)
    except dcls_zoo.DclsZooError as error:   # anything dcls-zoo refused or could not do
        ...

Bad arguments to a function or layer raise plain ``ValueError``/``TypeError`` naming the
argument, as torch and torchvision do. Messages name function arguments (``ema=False``), never
command-line flags: the ``dcls-zoo`` command translates them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CheckpointMismatchError",
    "ChecksumMismatchError",
    "DclsZooError",
    "ExportMismatchError",
    "HubUnreachableError",
    "NotOnHubError",
    "PretrainedWeightsError",
    "PushError",
    "UnsafeFileNameError",
    "WeightsFileError",
    "WeightsReadError",
    "short_list",
]


class DclsZooError(Exception):
    """The root of every error dcls-zoo defines."""


# --------------------------------------------------------------------------------------------
# files of weights


class WeightsFileError(DclsZooError, ValueError):
    """A weights file that cannot be read safely (the message names the file and what is wrong)."""


class ExportMismatchError(WeightsFileError):
    """An export whose ``config.json`` disagrees with what its weights file records (the message
    names the field and both values)."""


class CheckpointMismatchError(DclsZooError, ValueError):
    """A state dict that does not fit a model: ``missing``, ``unexpected`` and ``mismatched`` keys."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        what: str = "checkpoint",
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {short_list(unexpected)}")
        if mismatched:
            shapes = [f"{key} (checkpoint {list(got)}, model {list(want)})" for key, got, want in mismatched]
            parts.append(f"shape mismatches ({len(mismatched)}): {short_list(shapes)}")
        super().__init__(f"{what} does not fit the model: " + "; ".join(parts))


# --------------------------------------------------------------------------------------------
# fetching weights


class PretrainedWeightsError(DclsZooError, RuntimeError):
    """Weights that cannot be found, fetched or read (the message says which and why)."""


class ChecksumMismatchError(PretrainedWeightsError):
    """A weights file whose sha256 is not the one recorded for it."""


class WeightsReadError(PretrainedWeightsError, ValueError):
    """A fetched weights file that cannot be read: truncated, corrupted, or a refused pickle."""


class UnsafeFileNameError(PretrainedWeightsError):
    """A file name (from a URL or a config) that would leave its directory."""


class NotOnHubError(PretrainedWeightsError):
    """The Hub answered: no such repo, or no such file in it (404)."""


class HubUnreachableError(ConnectionError, PretrainedWeightsError):
    """A fetch found neither the server nor a cached copy (the message lists the ways out)."""


# --------------------------------------------------------------------------------------------
# publishing


class PushError(DclsZooError, RuntimeError):
    """An upload failed; the export is intact at :attr:`local_dir` (the message says how to retry)."""

    def __init__(self, message: str, local_dir: Path) -> None:
        super().__init__(message)
        self.local_dir = local_dir


def short_list(items: Iterable[str], limit: int = 12) -> str:
    """``"a, b, c, ... and 9 more"``: the first ``limit`` items (long lists in one-line messages)."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
