"""Token ids on disk and the sliding windows the model trains on.

text --(tokenizer, once)--> cached token array (.npy, memory-mapped) --> contiguous train / val split
     --> GPTDataset windows (input = ids[i : i+L], target = ids[i+1 : i+L+1]) --> DataLoaders
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpt.tokenizer import Tokenizer


def token_dtype(n_vocab: int) -> np.dtype:
    """The smallest integer type that holds every id: uint16 for GPT-2's 50,257 tokens."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.int32)


def cache_key(text: str, tokenizer: Tokenizer) -> str:
    """Same text + same tokenizer -> same key; any change to either -> a new cache file."""
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(json.dumps(tokenizer.to_config(), sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:32]


def cached_token_ids(text: str, tokenizer: Tokenizer, cache_dir: str | Path) -> np.ndarray:
    """Token ids of ``text``, computed once and memory-mapped from ``cache_dir`` afterwards."""
    path = Path(cache_dir) / f"{cache_key(text, tokenizer)}.npy"
    if not path.exists():
        ids = np.asarray(tokenizer.encode(text), dtype=token_dtype(tokenizer.n_vocab))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, ids)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache file
    return np.load(path, mmap_mode="r")


class GPTDataset(Dataset):
    """Windows of ``max_length`` tokens starting every ``stride`` tokens; the target is the input shifted by one."""

    def __init__(self, ids: np.ndarray, max_length: int, stride: int):
        if max_length <= 0 or stride <= 0:
            raise ValueError(f"max_length and stride must be positive, got {max_length} and {stride}")
        self.ids, self.max_length, self.stride = ids, max_length, stride

    def __len__(self) -> int:
        # A window needs max_length + 1 tokens (its target reaches one further).
        return max(0, (len(self.ids) - self.max_length - 1) // self.stride + 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        chunk = torch.from_numpy(self.ids[start : start + self.max_length + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


def split_ids(ids: np.ndarray, val_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the first part trains, the last ``val_ratio`` of the text validates (text never trained on)."""
    if not 0 < val_ratio < 1:
        raise ValueError(f"data.val_ratio must be in (0, 1), got {val_ratio}")
    n_train = len(ids) - int(len(ids) * val_ratio)
    return ids[:n_train], ids[n_train:]


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """Windows each process loads per step when ``global_batch_size`` windows are split over ``world_size`` processes."""
    if global_batch_size % world_size:
        raise ValueError(
            f"data.batch_size={global_batch_size} (the global batch) does not divide over {world_size} processes "
            f"(devices x num_nodes); use a multiple of {world_size}"
        )
    return global_batch_size // world_size


class GPTDataModule(L.LightningDataModule):
    """Tokenizes a corpus once (cached on disk) and serves train/val windows; ``batch_size`` is per process."""

    def __init__(
        self,
        text: str,
        tokenizer: Tokenizer,
        max_length: int,
        stride: int,
        batch_size: int,
        val_ratio: float,
        num_workers: int,
        cache_dir: str | Path,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("max_length", max_length), ("stride", stride), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"data.{name} must be positive, got {value}")
        self.text, self.tokenizer = text, tokenizer
        self.max_length, self.stride, self.batch_size = max_length, stride, batch_size
        self.val_ratio, self.num_workers, self.cache_dir, self.seed = val_ratio, num_workers, cache_dir, seed

    def prepare_data(self) -> None:
        cached_token_ids(self.text, self.tokenizer, self.cache_dir)  # rank 0 tokenizes; the others then read

    def setup(self, stage: str | None = None) -> None:
        ids = cached_token_ids(self.text, self.tokenizer, self.cache_dir)
        train_ids, val_ids = split_ids(ids, self.val_ratio)
        self.train_set = GPTDataset(train_ids, self.max_length, self.stride)
        self.val_set = GPTDataset(val_ids, self.max_length, self.max_length)  # validation: no overlapping windows
        for name, part, ds in (("train", train_ids, self.train_set), ("val", val_ids, self.val_set)):
            if len(ds) == 0:
                raise ValueError(
                    f"the {name} split has {len(part)} tokens, fewer than one window of data.max_length="
                    f"{self.max_length} + 1; use a longer corpus, a smaller data.max_length or another data.val_ratio"
                )

    def train_dataloader(self) -> DataLoader:
        # The same order of windows on 1 or N processes: one permutation per epoch, seeded by (seed, epoch); process r
        # takes its positions r, r + N, r + 2N, ... So the N per-process batches of step k together are exactly the
        # one-process batch k of N x batch_size windows, and a DDP run follows the single-process run step by step.
        # (Lightning keeps a DistributedSampler it is given, and calls its set_epoch at each epoch.)
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(
            self.train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(sampler) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
