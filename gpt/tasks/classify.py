"""Text classification with a GPT (task=classify, the book's chapter 6): labeled text -> token ids -> padded
batches -> a GPTModel whose output head gives one score per label -> the scores at each text's last real token.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from gpt.data.split import split
from gpt.errors import UserError
from gpt.model import GPTModel
from gpt.tasks.base import Metrics, Splits, Task
from gpt.tokenizer import Tokenizer

TRAINABLE = ("head", "last_block", "all")


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
            raise UserError(f"labels {unknown} are not among task.labels={labels}")
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
        raise UserError(f"task.trainable must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
    model.requires_grad_(trainable == "all")
    model.out_head.requires_grad_(True)
    if trainable == "last_block":
        model.trf_blocks[-1].requires_grad_(True)
        model.final_norm.requires_grad_(True)


class Classify(Task):
    """Cross-entropy over the labels, read at each text's last real token; loss and accuracy per split.
    Settings: ``trainable`` (head | last_block | all), ``lora`` (rank, alpha), and ``labels``, found in the data."""

    name = "classify"
    loaded_by = ("classify",)

    def data(self, source: Any, tokenizer: Tokenizer, data: dict, seed: int) -> Splits:
        if not hasattr(source, "rows"):
            raise UserError(f"task=classify needs labeled texts (data=sms_spam|labeled_text), not {source}")
        rows = source.rows()
        labels = list(data["labels"]) if data.get("labels") is not None else sorted({label for _, label in rows})
        rows = balance(rows, seed) if data.get("balance") else rows
        parts = split(rows, list(data["split"]), seed)
        print(f"{source}: {len(rows)} texts, labels {labels}; train/val/test {[len(s) for s in parts]}")
        self.settings["labels"] = labels  # stored with the model: its head has one output per label
        sets = [ClassificationDataset(rows, tokenizer, labels, data["max_length"]) for rows in parts]
        return Splits(*sets, collate=partial(classification_collate, pad_id=tokenizer.eot_id))

    def adapt(self, model: GPTModel) -> GPTModel:
        replace_head(model, len(self.settings["labels"]))
        if (self.settings.get("lora") or {}).get("rank"):
            return super().adapt(model)  # adapters everywhere, the new head included; only they train
        set_trainable(model, self.settings.get("trainable", "last_block"))
        return model

    def step(self, model: GPTModel, batch: dict) -> Metrics:
        logits = last_token_logits(model(batch["input_ids"]), batch["lengths"])  # (B, K)
        size = len(batch["labels"])
        return {"loss": (F.cross_entropy(logits, batch["labels"]), size),
                "acc": ((logits.argmax(dim=-1) == batch["labels"]).float().mean(), size)}

    def report(self, metrics: dict[str, float], records: list[dict], run_dir: Any, best: str) -> list[str]:
        return [f"val/acc: {metrics['val/acc']:.4f}  test/acc: {metrics['test/acc']:.4f}",
                f"label texts:   python classify.py ckpt={best} text=\"...\""]

    def label(self, model: GPTModel, tokenizer: Tokenizer, text: str, allow_special: bool = False) -> tuple[str, float]:
        """The most likely label of ``text`` and its probability (a typed <|endoftext|> is text unless allowed)."""
        device = model.tok_emb.weight.device
        ids = tokenizer.encode(text, allowed_special=allow_special)[: model.cfg.context_length] or [tokenizer.eot_id]
        with torch.no_grad():
            logits = last_token_logits(model(torch.tensor([ids], device=device)), torch.tensor([len(ids)]))
        probs = torch.softmax(logits[0], dim=-1)
        best = int(probs.argmax())
        return self.settings["labels"][best], float(probs[best])
