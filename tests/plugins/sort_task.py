"""A new task in one file: learn to sort digits ("3 1 2 =" -> " 1 2 3"), scored by exact match on a test split."""

import random

import torch

from gpt.generation import complete
from gpt.loss import IGNORE_INDEX, language_model_loss
from gpt.tasks.base import Splits, Task


class SortDigits(Task):
    name = "sort"
    loaded_by = ("generate",)

    def data(self, source, tokenizer, data, seed):
        rng = random.Random(seed)
        pairs = []
        for _ in range(self.settings["examples"]):
            digits = [rng.randrange(10) for _ in range(self.settings["length"])]
            pairs.append((" ".join(map(str, digits)) + " =", "".join(f" {d}" for d in sorted(digits))))
        examples = []
        for prompt, answer in pairs:  # every example has the same length: the default collate stacks them
            p, ids = tokenizer.encode(prompt), tokenizer.encode(prompt + answer) + [tokenizer.eot_id]
            x, y = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
            y[: len(p) - 1] = IGNORE_INDEX  # learn the answer, not the prompt
            examples.append((x, y))
        k = len(pairs) // 10
        return Splits(train=examples[2 * k :], val=examples[:k], test=pairs[k : 2 * k], test_collate=list)

    def step(self, model, batch):
        x, y = batch
        loss = language_model_loss(model, x, y, self.loss_chunk, ignore=True)
        return {"loss": (loss, (y != IGNORE_INDEX).sum())}

    def test_step(self, model, batch, tokenizer):
        n = 2 * self.settings["length"]
        return [{"prompt": p, "answer": a, "model": complete(model, tokenizer, p, n)} for p, a in batch]

    def report(self, metrics, records, run_dir, best):
        exact = sum(r["model"] == r["answer"] for r in records) / len(records)
        return [f"test exact match: {exact:.3f} of {len(records)}"]
