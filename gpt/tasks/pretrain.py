"""Next-token pretraining on raw text (task=pretrain, the default): the book's chapter 5.

text source --> token cache --> contiguous train / val split --> sliding windows --> mean next-token loss.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt.data.tokens import token_ids
from gpt.data.windows import GPTDataset, split_ids
from gpt.errors import UserError
from gpt.loss import language_model_loss
from gpt.model import GPTModel
from gpt.tasks.base import Metrics, Splits, Task
from gpt.tokenizer import Tokenizer


class Pretrain(Task):
    name = "pretrain"
    loaded_by = ("generate", "evaluate", "serve")
    needs_eot = False
    validate_before_training = False

    def data(self, source: Any, tokenizer: Tokenizer, data: dict, seed: int) -> Splits:
        if not hasattr(source, "documents"):
            raise UserError(f"task=pretrain needs a text source (data=kjv|text_file|folder|jsonl|hf), not {source}")
        ids = token_ids(source, tokenizer, data["cache_dir"])
        train_ids, val_ids = split_ids(ids, data["val_ratio"])
        max_length = data["max_length"]
        splits = Splits(GPTDataset(train_ids, max_length, data["stride"]),
                        GPTDataset(val_ids, max_length, max_length))  # validation: windows do not overlap
        for name, part, ds in (("train", train_ids, splits.train), ("val", val_ids, splits.val)):
            if len(ds) == 0:
                raise UserError(
                    f"the {name} split has {len(part)} tokens, fewer than one window of data.max_length="
                    f"{max_length} + 1; use a longer corpus, a smaller data.max_length or another data.val_ratio"
                )
        return splits

    def step(self, model: GPTModel, batch: tuple[torch.Tensor, torch.Tensor]) -> Metrics:
        inputs, targets = batch
        # Weighted by tokens: a short last val batch counts for what it holds.
        return {"loss": (language_model_loss(model, inputs, targets, self.loss_chunk), targets.numel())}

    def epoch_metrics(self, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**means, "perplexity": torch.exp(means["loss"])}

    def report(self, metrics: dict[str, float], records: list[dict], run_dir: Any, best: str) -> list[str]:
        return [f"sample it:     python generate.py ckpt={best} prompt=\"...\""]
