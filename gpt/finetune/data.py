"""Where fine-tuning data comes from (a local file, or a public URL checked against a SHA-256) and the
LightningDataModules that serve it: labeled texts for classification, Alpaca records for instruction tuning."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from gpt.finetune.classification import ClassificationDataset, classification_collate
from gpt.finetune.instruction import InstructionDataset, instruction_collate
from gpt.tokenizer import Tokenizer


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(url: str, sha256: str, dest: Path, member: str | None = None) -> Path:
    """``dest``, downloaded from ``url`` once (``member`` of it when it is a zip) and checked against ``sha256``."""
    if not dest.is_file():
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        if member is not None:
            data = zipfile.ZipFile(io.BytesIO(data)).read(member)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    if sha256_of(dest) != sha256:
        raise ValueError(f"{dest} (from {url}) does not have the expected SHA-256 {sha256}; delete it and retry")
    return dest


def data_file(path: str | None, url: str | None, sha256: str | None, member: str | None, cache_dir: str) -> Path:
    """A local ``path`` as given; without one, the recipe's public file, fetched into ``cache_dir``."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"data.path={path} does not exist")
        return Path(path)
    if url is None:
        raise ValueError("this data recipe has no public source: give a local file with data.path=...")
    return fetch(url, sha256, Path(cache_dir) / (member or url.rsplit("/", 1)[-1]), member)


class ClassificationDataModule(L.LightningDataModule):
    """Train / val / test splits of (text, label) rows, tokenized and padded per batch."""

    def __init__(self, splits: list[list], tokenizer: Tokenizer, labels: list[str], max_length: int,
                 batch_size: int, num_workers: int):
        super().__init__()
        self.sets = [ClassificationDataset(rows, tokenizer, labels, max_length) for rows in splits]
        self.collate = partial(classification_collate, pad_id=tokenizer.eot_id)
        self.batch_size, self.num_workers = batch_size, num_workers

    def _loader(self, i: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.sets[i], batch_size=self.batch_size, shuffle=shuffle,
                          drop_last=shuffle and len(self.sets[i]) >= self.batch_size,
                          collate_fn=self.collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2, shuffle=False)


class InstructionDataModule(L.LightningDataModule):
    """Train / val splits of Alpaca records as (inputs, targets) batches; the test split as the records
    themselves, which the model answers after training."""

    def __init__(self, splits: list[list[dict]], tokenizer: Tokenizer, max_length: int, mask_prompt: bool,
                 batch_size: int, num_workers: int):
        super().__init__()
        self.train_set, self.val_set = (InstructionDataset(records, tokenizer) for records in splits[:2])
        self.test_records = splits[2]
        self.collate = partial(instruction_collate, pad_id=tokenizer.eot_id, allowed_max_length=max_length,
                               mask_prompt=mask_prompt)
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_set) >= self.batch_size,
                          collate_fn=self.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_records, batch_size=self.batch_size, collate_fn=list)
