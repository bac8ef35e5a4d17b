"""Checkpoints on a disk that fills up: the previous checkpoint survives, nothing half-written remains."""

from __future__ import annotations

import errno

import pytest
import torch
from helpers import NO_AFTER_FIT, QUICKSTART, short_fit

from lightning_modules import checkpoint_io
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.commands.main import main


def _disk_fills_after(monkeypatch, good_writes: int) -> list[str]:
    """Let ``good_writes`` checkpoint writes through, then fail each one half-way with ENOSPC."""
    written: list[str] = []

    class FullDisk:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            if len(written) >= good_writes:
                self.file.write(bytes(data[: len(data) // 2]))
                self.file.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(self.file.name)
            return self.file.write(data)

    monkeypatch.setattr(checkpoint_io, "open", FullDisk, raising=False)
    return written


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, target)
    _disk_fills_after(monkeypatch, good_writes=0)
    with pytest.raises(OSError) as info:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, target)
    assert info.value.errno == errno.ENOSPC
    assert torch.load(target, weights_only=True)["epoch"] == 0  # the old file, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial file left


def test_remote_paths_go_to_lightnings_writer(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(checkpoint_io.TorchCheckpointIO, "save_checkpoint", lambda self, c, p, s=None: seen.append(p))
    AtomicCheckpointIO().save_checkpoint({}, "memory://bucket/last.ckpt")
    assert seen == ["memory://bucket/last.ckpt"]


@pytest.mark.slow
def test_a_run_that_fills_the_disk_resumes_from_its_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = _disk_fills_after(monkeypatch, good_writes=2)  # epoch 0: best + last, then the disk is full
    with pytest.raises(OSError, match="No space left"):
        main(["fit", "-c", QUICKSTART, *short_fit(epochs=3, train_batches=2, val_batches=1), *NO_AFTER_FIT])
    assert len(written) == 2
    (run,) = (tmp_path / "logs" / "quickstart").iterdir()
    checkpoints = run / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".partial")]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    monkeypatch.undo()  # space again
    monkeypatch.chdir(tmp_path)
    resume = [*short_fit(epochs=2, train_batches=2, val_batches=1), *NO_AFTER_FIT, f"--ckpt_path={checkpoints / 'last.ckpt'}"]
    assert main(["fit", "-c", QUICKSTART, *resume]) == 0
