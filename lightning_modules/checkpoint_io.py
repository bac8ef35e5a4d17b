"""``AtomicCheckpointIO``: Lightning checkpoints written so that a failure never leaves a broken file.

Lightning's ``TorchCheckpointIO`` writes a local checkpoint through an fsspec transaction, which
stages it in the system temp directory and then *copies* it onto the target when that is another
filesystem: a full disk (or a crash) during the copy leaves a truncated ``last.ckpt`` under its
real name. This plugin writes local checkpoints with :func:`dcls_zoo.state_dicts.atomic_path`:
serialised in memory, written to a temporary file beside the target, flushed to disk, renamed.
A failed write raises (``OSError``, e.g. ``ENOSPC``) with the previous checkpoint intact and no
temporary file left. Remote paths (``s3://``...) go to Lightning's own writer.

In YAML (the shipped configs do this)::

    trainer:
      plugins:
        - class_path: lightning_modules.checkpoint_io.AtomicCheckpointIO
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from dcls_zoo.state_dicts import atomic_path

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic in the checkpoint's own directory."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: a failure here touches no file
        with atomic_path(os.fspath(path)) as temporary:
            with open(temporary, "wb") as file:
                file.write(buffer.getbuffer())
