"""The DataModule: any task's datasets (``Task.data``) as DataLoaders, with a training order that a resumed run
picks up exactly where it stopped."""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from gpt.data.sampler import ResumableSampler
from gpt.errors import UserError
from gpt.tasks.base import Splits, Task
from gpt.tokenizer import Tokenizer


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """Windows each process loads per step when ``global_batch_size`` windows are split over ``world_size`` processes."""
    if global_batch_size % world_size:
        raise UserError(
            f"data.batch_size={global_batch_size} (the global batch) does not divide over {world_size} processes "
            f"(devices x num_nodes); use a multiple of {world_size}"
        )
    return global_batch_size // world_size


def _update(digest, item) -> None:
    """Hashes a dataset item: tensors by their bytes, sequences item by item, anything else by its repr."""
    if isinstance(item, torch.Tensor):
        digest.update(item.numpy().tobytes())
    elif isinstance(item, (list, tuple)):
        for part in item:
            _update(digest, part)
    else:
        digest.update(repr(item).encode())


class TaskDataModule(L.LightningDataModule):
    """``task``'s splits of ``source`` (built once, on first use), batched ``batch_size`` per process."""

    def __init__(self, task: Task, source: Any, tokenizer: Tokenizer, data: dict, batch_size: int, seed: int):
        super().__init__()
        self.task, self.source, self.tokenizer, self.data = task, source, tokenizer, data
        self.batch_size, self.seed = batch_size, seed
        self.num_workers = data.get("num_workers", 0)
        self.splits: Splits | None = None
        self._resume: dict | None = None  # where the run being resumed was in its data

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.task.data(self.source, self.tokenizer, self.data, self.seed)

    def fingerprint(self) -> str:
        """The data's identity, cheap to compute: every split's length, and the first and last items of the
        training and validation splits. A resumed run compares it with the checkpoint's."""
        digest = hashlib.sha256()
        for dataset in (self.splits.train, self.splits.val, self.splits.test):
            n = 0 if dataset is None else len(dataset)
            digest.update(str(n).encode())
            if dataset is not self.splits.test:
                for i in sorted({0, n - 1} - {-1}):
                    _update(digest, dataset[i])
        return digest.hexdigest()[:16]

    def _loader(self, dataset, collate, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers,
                          # Its own generator: creating an iterator then draws no number from the global RNG.
                          generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.sampler = ResumableSampler(len(self.splits.train), self.seed, rank, world_size)
        drop_last = len(self.sampler) >= self.batch_size
        if self._resume is not None:
            epoch, done = self._resume["epoch"], self._resume["batches_done"]
            batches = len(self.sampler) // self.batch_size if drop_last else -(-len(self.sampler) // self.batch_size)
            if done >= batches:  # saved after the last batch of an epoch: the next one starts afresh
                epoch, done = epoch + 1, 0
            self.sampler.resume(epoch, done * self.batch_size)
            self._resume = None
        return self._loader(self.splits.train, self.splits.collate, sampler=self.sampler, drop_last=drop_last,
                            persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val, self.splits.collate, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test, self.splits.test_collate or self.splits.collate, shuffle=False)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and how many of its batches this rank has trained on."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        return {"epoch": loop.epoch_progress.current.processed, "batches_done": loop.epoch_loop.batch_idx + 1}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
