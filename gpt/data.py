"""Token ids on disk and the sliding windows the model trains on.

text --(tokenizer, once)--> cached token array (.npy, memory-mapped) --> contiguous train / val split
     --> GPTDataset windows (input = ids[i : i+L], target = ids[i+1 : i+L+1]) --> DataLoaders
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


CHUNK_CHARS = 1 << 14  # characters per chunk (16K): small pieces keep every thread busy to the end
IN_FLIGHT_PER_THREAD = 4  # chunks queued per thread: a few hundred KB of text and ids in memory, whatever the corpus


def _safe_cut(text: str, i: int) -> int | None:
    """Where to cut ``text`` near the newline ``text[i]`` so that both sides encode to the ids they have in the
    whole text, or None. GPT-2's pre-tokeniser splits a run of whitespace before a non-space character into the run
    less its last character and that last character (which may join the next word, as in " the"): so cut after a
    lone newline ("x\n|y") or before the last character of a longer run ("x\n|\ny", "x |\ny"). The book's
    word-level tokenizers drop whitespace, so any of these cuts is safe for them too."""
    if not 0 < i < len(text) - 1 or text[i + 1].isspace():
        return None
    return i if text[i - 1].isspace() else i + 1


def safe_chunks(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut only where encoding the pieces one by one gives
    exactly the ids of encoding the whole text (see ``_safe_cut``)."""
    start = 0
    while start < len(text):
        newline, cut = text.find("\n", start + size), None
        while newline != -1 and cut is None:
            cut = _safe_cut(text, newline)
            newline = text.find("\n", newline + 1)
        end = len(text) if cut is None else cut
        yield text[start:end]
        start = end


def _encode_stream(text: str, tokenizer: Tokenizer) -> Iterator[list[int]]:
    """Token ids of ``text``, chunk by chunk in order, encoded on one thread per core. tiktoken releases the GIL
    while it encodes, so the chunks run in parallel; a bounded queue keeps memory flat and, unlike batch calls,
    never waits for a batch's slowest chunk before starting the next ones."""
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        queued: deque[Future[list[int]]] = deque()
        for chunk in safe_chunks(text, CHUNK_CHARS):
            # allowed_special: the corpus joins its documents with <|endoftext|> on purpose (gpt.corpus.DOC_SEPARATOR)
            queued.append(pool.submit(tokenizer.encode, chunk, allowed_special=True))
            if len(queued) >= IN_FLIGHT_PER_THREAD * threads:
                yield queued.popleft().result()
        while queued:
            yield queued.popleft().result()


def cached_token_ids(text: str, tokenizer: Tokenizer, cache_dir: str | Path) -> np.ndarray:
    """Token ids of ``text``, computed once and memory-mapped from ``cache_dir`` afterwards.

    The ids stream to disk as they are encoded, so memory stays flat however long the text is.
    """
    path = Path(cache_dir) / f"{cache_key(text, tokenizer)}.npy"
    if not path.exists():
        dtype = token_dtype(tokenizer.n_vocab)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw, tmp = path.with_suffix(f".{os.getpid()}.ids"), path.with_suffix(f".{os.getpid()}.tmp")
        n = 0
        with open(raw, "w+b") as f:
            for ids in _encode_stream(text, tokenizer):
                f.write(np.fromiter(ids, dtype=dtype, count=len(ids)).tobytes())
                n += len(ids)
            # Now that the length is known: the .npy header, then the ids copied behind it.
            f.seek(0)
            with open(tmp, "wb") as out:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(f, out)
        raw.unlink()
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


class ResumableSampler(DistributedSampler):
    """A shuffled pass over ``n`` windows, split over processes, that a resumed run can pick up in the middle.

    Epoch ``e`` visits ``randperm(n)`` drawn from ``seed + e`` (its own generator: the global RNG is untouched),
    so any epoch's order can be rebuilt from two integers. Process ``r`` of ``N`` takes positions r, r + N, ... of
    the (padded) permutation, so the N per-process batches of step k together are exactly batch k of one process
    with N times the batch: a DDP run follows the single-process run step by step. ``resume(epoch, skip)`` makes
    the next pass over ``epoch`` start after its first ``skip`` indices, those the interrupted run had trained on.
    A DistributedSampler, so Lightning uses it as it is under DDP instead of wrapping it in another.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.n = n
        self._skip = (0, 0)  # (epoch, indices to skip in it)

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self._skip = epoch, (epoch, skip)

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)  # the full pass, also when resuming: Lightning counts from its state

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: len(self) * self.num_replicas - self.n]  # pad so every process gets len(self) indices
        mine = order[self.rank :: self.num_replicas]
        skip_epoch, skip = self._skip
        if skip_epoch == self.epoch:
            mine, self._skip = mine[skip:], (0, 0)
        return iter(mine)


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
        self.val_ratio, self.num_workers, self.cache_dir = val_ratio, num_workers, cache_dir
        self.seed = seed
        self._resume: dict | None = None  # where the run being resumed was in its data

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
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.sampler = ResumableSampler(len(self.train_set), self.seed, rank, world_size)
        drop_last = len(self.sampler) >= self.batch_size
        if self._resume is not None:
            epoch, done = self._resume["epoch"], self._resume["batches_done"]
            batches = len(self.sampler) // self.batch_size if drop_last else -(-len(self.sampler) // self.batch_size)
            if done >= batches:  # saved after the last batch of an epoch: the next one starts afresh
                epoch, done = epoch + 1, 0
            self.sampler.resume(epoch, done * self.batch_size)
            self._resume = None
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Its own generator: creating an iterator then draws no number from the global RNG (training's).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and how many of its batches this rank has trained on."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        return {"epoch": loop.epoch_progress.current.processed, "batches_done": loop.epoch_loop.batch_idx + 1}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None
