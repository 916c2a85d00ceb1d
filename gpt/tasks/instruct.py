"""Instruction fine-tuning (task=instruct, the book's chapter 7): Alpaca records -> prompt + response text ->
token ids -> padded batches whose targets ignore the padding (and optionally the prompt). After training, the model
answers the test split (``test_responses.json`` beside the checkpoint tested).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from gpt.data.sources.alpaca import format_input
from gpt.data.split import split
from gpt.errors import UserError
from gpt.generation import complete
from gpt.loss import IGNORE_INDEX, language_model_loss
from gpt.model import GPTModel
from gpt.tasks.base import Metrics, Splits, Task
from gpt.tokenizer import Tokenizer


class InstructionDataset(Dataset):
    """Each record as (token ids of prompt + response, number of prompt tokens)."""

    def __init__(self, records: list[dict], tokenizer: Tokenizer):
        self.items = []
        for r in records:
            prompt = tokenizer.encode(format_input(r))
            self.items.append((prompt + tokenizer.encode(r["output"]), len(prompt)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]


def instruction_collate(
    batch: list[tuple[list[int], int]],
    pad_id: int = 50256,
    allowed_max_length: int | None = None,
    mask_prompt: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (B, T), from (ids, prompt length) pairs.

    Each sequence gets one ``<|endoftext|>`` (``pad_id``) appended, so the model learns to stop, and is padded
    with it to the longest; the targets are the inputs shifted by one, with every pad after the first set to
    ``IGNORE_INDEX`` (and, with ``mask_prompt``, the positions that predict prompt tokens too), then both are
    cut to ``allowed_max_length``.
    """
    longest = max(len(ids) for ids, _ in batch) + 1
    inputs, targets = [], []
    for ids, prompt_len in batch:
        padded = torch.tensor(ids + [pad_id] * (longest - len(ids)))  # the first pad is the end-of-text token
        x, y = padded[:-1], padded[1:].clone()
        y[len(ids) :] = IGNORE_INDEX  # y[len(ids) - 1] is the end-of-text token and stays
        if mask_prompt:
            y[: max(prompt_len - 1, 0)] = IGNORE_INDEX  # y[i] is token i + 1: a prompt token while i + 1 < prompt_len
        inputs.append(x[:allowed_max_length])
        targets.append(y[:allowed_max_length])
    return torch.stack(inputs), torch.stack(targets)



class Instruct(Task):
    """Next-token loss on the response tokens (targets of IGNORE_INDEX are skipped). Settings: ``mask_prompt``,
    ``response_tokens`` (at most this many new tokens per test answer, greedy), ``lora``."""

    name = "instruct"
    loaded_by = ("generate", "evaluate", "serve")
    chats = True

    def data(self, source: Any, tokenizer: Tokenizer, data: dict, seed: int) -> Splits:
        if not hasattr(source, "records"):
            raise UserError(f"task=instruct needs Alpaca records (data=instruction), not {source}")
        records = source.records()
        train, val, test = split(records, list(data["split"]), seed if data.get("shuffle") else None)
        print(f"{source}: {len(records)} records; train/val/test {[len(train), len(val), len(test)]}")
        collate = partial(instruction_collate, pad_id=tokenizer.eot_id, allowed_max_length=data["max_length"],
                          mask_prompt=self.settings.get("mask_prompt", False))
        return Splits(InstructionDataset(train, tokenizer), InstructionDataset(val, tokenizer), test, collate,
                      test_collate=list)  # the test split: the records themselves, answered at test time

    def step(self, model: GPTModel, batch: tuple[torch.Tensor, torch.Tensor]) -> Metrics:
        inputs, targets = batch
        # Weighted by the tokens that count: val/loss is the mean over every response token of the split.
        loss = language_model_loss(model, inputs, targets, self.loss_chunk, ignore=True)
        return {"loss": (loss, (targets != IGNORE_INDEX).sum())}

    def epoch_metrics(self, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**means, "perplexity": torch.exp(means["loss"])}

    def test_step(self, model: GPTModel, batch: list[dict], tokenizer: Tokenizer) -> list[dict]:
        n = self.settings.get("response_tokens", 256)
        return [{**r, "model_response": complete(model, tokenizer, format_input(r), n).strip()} for r in batch]

    def report(self, metrics: dict[str, float], records: list[dict], run_dir: Any, best: str) -> list[str]:
        path = Path(best).parent / "test_responses.json"
        path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
        return [f"test answers:  {path}", f"chat with it:  python generate.py ckpt={best} chat=true"]

    def prompt(self, text: str) -> str:
        return format_input({"instruction": text})
