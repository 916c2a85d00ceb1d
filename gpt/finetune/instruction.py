"""Instruction fine-tuning (the book's chapter 7): Alpaca records -> prompt + response text -> token ids ->
padded batches whose targets ignore the padding (and optionally the prompt).

Pure torch: no Lightning. generate.py's chat uses the same template.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from gpt.tokenizer import Tokenizer

IGNORE_INDEX = -100  # F.cross_entropy skips targets with this value
RESPONSE_HEADER = "\n\n### Response:\n"


def format_input(entry: dict) -> str:
    """The Alpaca prompt: a preamble, the instruction, the input when there is one, and the response header."""
    text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + RESPONSE_HEADER


def check_records(records: list, source: str) -> list[dict]:
    """Alpaca records: a list of objects with ``instruction`` and ``output`` (``input`` optional)."""
    if not isinstance(records, list) or not records:
        raise ValueError(f"{source}: expected a non-empty JSON list of records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"instruction", "output"} <= r.keys():
            raise ValueError(f"{source}: record {i} has no instruction/output fields (Alpaca format expected)")
    return records


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

