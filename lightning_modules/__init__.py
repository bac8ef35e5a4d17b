"""dcls-zoo's research template: the ``dcls-zoo`` command, the LightningModule, DataModules and callbacks.

Rooms, by role:

- the recipe (science): :mod:`.module` (:class:`ImageClassifier`), :mod:`.optim`, :mod:`.method`
  (the paper's training-time rules: :class:`ClampPositions`, :class:`SigmaSchedule`);
- observation: :mod:`.position_monitor` (plots and statistics of the learned positions);
- engineering: :mod:`.callbacks` (:class:`EpochSeed`, :class:`HubPushCallback`, the metrics of a
  resumed run), :mod:`.averaging` (the warm-up EMA), :mod:`.runs` (run folders, checkpoints,
  ``summary.json``, what made a run), :mod:`.run_record` (a run in words, for cards),
  :mod:`.checkpoint_io`, :mod:`.checkpoints`, :mod:`.predictions`;
- data: :mod:`.data` (DataModules and the embedded Fashion-MNIST images);
- the commands wing: :mod:`.commands` (``dcls-zoo`` and its subcommands).

The names below resolve on first use (PEP 562) rather than at import: importing Lightning takes
seconds, and ``dcls-zoo --help``, ``--version`` and the project commands' argument errors must not
wait for it. ``from lightning_modules import ImageClassifier`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    "ClampPositions": ".method",
    "SigmaSchedule": ".method",
    "EpochSeed": ".callbacks",
    "HubPushCallback": ".callbacks",
    "PositionMonitor": ".position_monitor",
    "FashionMNISTDataModule": ".data",
    "ImageFolderDataModule": ".data",
    "SyntheticDataModule": ".data",
    "ImageClassifier": ".module",
    "NonFiniteLossError": ".module",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
