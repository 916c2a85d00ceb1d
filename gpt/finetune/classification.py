"""Text classification with a GPT (the book's chapter 6): labeled text -> token ids -> padded batches ->
a GPTModel whose output head gives ``num_classes`` scores -> the scores at each text's last real token.

Pure torch: no Lightning.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from gpt.model import GPTModel
from gpt.tokenizer import Tokenizer

TRAINABLE = ("head", "last_block", "all")


def read_labeled(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV (text,label with a header) or a TSV in the SMS Spam Collection's layout
    (label<TAB>text, no header)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(f))
            if not rows or not {"text", "label"} <= rows[0].keys():
                raise ValueError(f"{path}: expected a CSV with a header row naming the columns text and label")
            return [(r["text"], r["label"]) for r in rows]
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    bad = next((i for i, r in enumerate(rows, 1) if len(r) != 2), None)
    if bad is not None:
        raise ValueError(f"{path}:{bad}: expected label<TAB>text")
    return [(text, label) for label, text in rows]


def balance(rows: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """Undersample every label to the count of the rarest one (SMS spam: 747 ham and 747 spam), in a seeded order."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    n = min(len(v) for v in by_label.values())
    rng = random.Random(seed)
    return [row for label in sorted(by_label) for row in rng.sample(by_label[label], n)]


class ClassificationDataset(Dataset):
    """Token ids of each text (cut to ``max_length``) and its label's index in ``labels``."""

    def __init__(self, rows: list[tuple[str, str]], tokenizer: Tokenizer, labels: list[str], max_length: int):
        index = {label: i for i, label in enumerate(labels)}
        unknown = sorted({label for _, label in rows} - index.keys())
        if unknown:
            raise ValueError(f"labels {unknown} are not among task.labels={labels}")
        self.items = [(tokenizer.encode(text)[:max_length] or [tokenizer.eot_id], index[label]) for text, label in rows]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]


def classification_collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the texts to the longest in the batch with ``pad_id``; keep each text's length to find its last token."""
    longest = max(len(ids) for ids, _ in batch)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (longest - len(ids)) for ids, _ in batch]),  # (B, T)
        "lengths": torch.tensor([len(ids) for ids, _ in batch]),  # (B,)
        "labels": torch.tensor([label for _, label in batch]),  # (B,)
    }


def replace_head(model: GPTModel, num_classes: int) -> GPTModel:
    """A fresh ``num_classes``-way output head (in place). A head tied to the token embedding is untied: the
    embedding keeps its weights, the new head has its own."""
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes).to(model.tok_emb.weight.device)
    return model


def last_token_logits(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """logits (B, T, K) -> (B, K) at each row's last real token. With causal attention that position has seen
    the whole text and none of the padding after it."""
    return logits[torch.arange(logits.shape[0], device=logits.device), lengths - 1]


def set_trainable(model: GPTModel, trainable: str) -> None:
    """Freeze the model except: the output head (``head``); the last block, the final norm and the head
    (``last_block``, the book's choice); or nothing (``all``)."""
    if trainable not in TRAINABLE:
        raise ValueError(f"task.trainable must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
    model.requires_grad_(trainable == "all")
    model.out_head.requires_grad_(True)
    if trainable == "last_block":
        model.trf_blocks[-1].requires_grad_(True)
        model.final_norm.requires_grad_(True)
