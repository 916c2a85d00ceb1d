"""The LightningModules of the fine-tuning tasks. The model is a GPTModel adapted by ``gpt.finetune.task``; the
optimizer and its schedule are pretraining's (``gpt.module.adamw_with_schedule``)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from gpt.finetune.classification import last_token_logits
from gpt.finetune.instruction import IGNORE_INDEX, format_input
from gpt.finetune.task import adapt_model
from gpt.generation import generate
from gpt.model import GPTConfig, GPTModel
from gpt.module import adamw_with_schedule
from gpt.tokenizer import load_tokenizer


class FinetuneModule(L.LightningModule):
    """A GPTModel built from ``model``, loaded with ``base_state`` (the weights it starts from, not stored as a
    hyperparameter) and adapted to ``task``. Hyperparameters are plain dicts, so ``gpt.checkpoint`` rebuilds the
    same model without Lightning."""

    def __init__(self, model: dict, optim: dict, tokenizer: dict, task: dict, base_state: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["base_state"])
        base = GPTModel(GPTConfig(**model))
        if base_state is not None:
            base.load_state_dict(base_state)
        self.model = adapt_model(base, task)

    def configure_optimizers(self):
        return adamw_with_schedule(self, self.hparams.optim)


class ClassifierModule(FinetuneModule):
    """Cross-entropy over the classes, read at each text's last real token; loss and accuracy per split."""

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        logits = last_token_logits(self.model(batch["input_ids"]), batch["lengths"])  # (B, K)
        loss = F.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(dim=-1) == batch["labels"]).float().mean()
        on_step = split == "train"
        size = len(batch["labels"])
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=size)
        self.log(f"{split}/acc", accuracy, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=size)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")


class InstructModule(FinetuneModule):
    """Next-token loss on the response tokens (targets of -100 are skipped); at test time the model answers
    the test split and the answers go to ``test_responses.json`` beside the checkpoint tested."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        # Weighted by the tokens that count, so val/loss is the mean over every response token of the split.
        self.log("val/loss", loss, prog_bar=True, batch_size=int((targets != IGNORE_INDEX).sum()))

    def on_test_epoch_start(self) -> None:
        self.responses: list[dict] = []

    def test_step(self, batch: list[dict], batch_idx: int) -> None:
        tokenizer = load_tokenizer(self.hparams.tokenizer)
        ctx = self.model.cfg.context_length
        for record in batch:
            ids = tokenizer.encode(format_input(record))[-ctx:]
            out = generate(self.model, torch.tensor([ids], device=self.device), self.hparams.task["response_tokens"],
                           ctx, eos_id=tokenizer.eot_id)  # greedy
            new = [t for t in out[0, len(ids):].tolist() if t != tokenizer.eot_id]
            self.responses.append({**record, "model_response": tokenizer.decode(new).strip()})

    def on_test_epoch_end(self) -> None:
        if not self.trainer.is_global_zero:  # under DDP each rank answers a shard; rank 0 writes its own
            return
        where = Path(self.trainer.ckpt_path).parent if self.trainer.ckpt_path else Path(self.trainer.default_root_dir)
        self.responses_path = where / "test_responses.json"
        self.responses_path.write_text(json.dumps(self.responses, indent=2, ensure_ascii=False), encoding="utf-8")
