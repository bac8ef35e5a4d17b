"""Resumable sampling: a shuffle seeded per epoch, and a loader that can
continue an epoch exactly where a mid-epoch checkpoint stopped it.

:class:`SeededShuffleSampler` draws each epoch's order from ``(seed, epoch)`` alone, so a resumed
run replays the order an uninterrupted one would have seen; :class:`ResumableDataLoader` saves
how many batches of the epoch were served (Lightning's stateful-dataloader protocol) and, on
restore, skips exactly those.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableDataLoader", "SeededShuffleSampler"]


class SeededShuffleSampler(Sampler[int]):
    """A random order of ``range(size)`` that depends on ``seed`` only.

    A plain ``RandomSampler`` draws its permutation from a generator whose state depends on what
    ran before the epoch; here the order is a function of the seed, which :meth:`_ImageDataModule.reseed`
    sets per epoch, so a resumed run sees the epochs in the same order as an uninterrupted one.

    Mid-epoch resume (:class:`ResumableDataLoader`): :meth:`resume_at` makes the pass of one epoch
    start after the samples that epoch had already given; Lightning's ``set_epoch`` call at the
    start of any other epoch cancels it.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed = size, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch, a resumed one included."""
        self.epoch = epoch
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None  # the checkpoint's epoch was over: this one starts from its first sample

    def resume_at(self, epoch: int, samples: int) -> None:
        """Skip the first ``samples`` of ``epoch``'s order (only there, and only once)."""
        self._resume = (epoch, samples)

    @property
    def skipped(self) -> int:
        """The samples the next pass skips."""
        return self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        start, self._resume = self.skipped, None
        return iter(torch.randperm(self.size, generator=generator)[start:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """The training loader, resumable mid-epoch: Lightning saves its :meth:`state_dict` in checkpoints.

    The state is the epoch, its shuffle seed and how many batches of it were taken. Lightning takes
    the batches of a sized loader one at a time (no prefetch), so that is what training consumed.
    Resuming from a checkpoint written mid-epoch (see below) continues that epoch with exactly the
    samples it had not given yet, in the same order and batches, and the epoch keeps its length
    (so the learning-rate schedule is the same). Not replayed: the random draws of the rest of
    that epoch (augmentations, mixup, drop-path) start afresh, so those batches hold the
    uninterrupted run's samples, not its augmentations. From the next epoch on,
    :class:`~lightning_modules.callbacks.EpochSeed` makes the run bit-identical again.

    What a checkpoint written mid-epoch is: one saved after a training batch (``ModelCheckpoint``'s
    ``every_n_train_steps`` or ``train_time_interval``). A run stopped by ``--trainer.max_steps``
    ends its epoch early by Lightning's count: its ``last.ckpt`` resumes at the next epoch.

    Only a :class:`SeededShuffleSampler` is resumable; under DDP Lightning wraps the sampler in a
    distributed one and a mid-epoch resume restarts the epoch's order (epoch-end resumes stay exact).
    """

    def __init__(self, dataset: Dataset, *, sampler: Sampler[int], **kwargs: Any) -> None:
        if not kwargs.get("drop_last"):
            raise ValueError("ResumableDataLoader needs drop_last=True: a resumed epoch restarts on a batch boundary")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._taken = 0

    def _seeded(self) -> SeededShuffleSampler | None:
        return self.sampler if isinstance(self.sampler, SeededShuffleSampler) else None

    def __iter__(self) -> Iterator[Any]:
        sampler = self._seeded()
        self._taken = sampler.skipped // self.batch_size if sampler is not None else 0
        for batch in super().__iter__():
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "seed", "batches"}``: the epoch, its order and the batches it has given."""
        sampler = self._seeded()
        if sampler is None:
            return {}
        return {"epoch": int(sampler.epoch), "seed": int(sampler.seed), "batches": int(self._taken)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        sampler = self._seeded()
        if sampler is None or not state_dict or int(state_dict["batches"]) >= len(self):
            return
        sampler.seed = int(state_dict["seed"])
        sampler.resume_at(int(state_dict["epoch"]), int(state_dict["batches"]) * self.batch_size)
