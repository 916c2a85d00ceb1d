"""What a task is: how it adapts a GPTModel, what data it trains on, its loss and metrics, what it reports, and
which commands may load its checkpoints. Pure torch: no Lightning, no Hydra. The generic LightningModule and
DataModule in ``gpt.training`` run any task; a new task is one file with a subclass and one ``conf/task`` YAML file
that names it by ``_target_`` (README, "Extending").
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from gpt.errors import UserError
from gpt.lora import apply_lora
from gpt.model import GPTModel
from gpt.tokenizer import Tokenizer

# A step's metrics: name -> (mean over the batch, how much the batch weighs in the epoch's mean).
Metrics = dict[str, tuple[torch.Tensor, torch.Tensor | int]]
COMMANDS = ("generate", "evaluate", "classify", "serve")


@dataclass
class Splits:
    """A task's data: train and val datasets (and test, if the task tests), batched with ``collate``."""

    train: Dataset
    val: Dataset
    test: Dataset | None = None
    collate: Callable | None = None  # None: torch's default collate
    test_collate: Callable | None = None  # None: ``collate``


class Task:
    """The base task. ``settings`` is the task's config (conf/task/<name>.yaml) as a plain dict; it is stored in
    every checkpoint, so loading rebuilds the same task and model without Hydra."""

    name = "task"
    loaded_by: tuple[str, ...] = ()  # commands (COMMANDS) that can use its checkpoints
    needs_eot = True  # the data uses <|endoftext|> (padding, end of answer): word-level v1 cannot serve
    validate_before_training = True  # print how good the starting model is (fine-tuning); off for pretraining
    chats = False  # the model answers turns in an instruction template (chat=true, serve.py's chat completions)

    def __init__(self, **settings: Any):
        self.settings = copy.deepcopy(settings)
        self.loss_chunk: int | None = None  # tokens of logits at a time (conf/speed); set by the trainer

    def to_config(self) -> dict:
        return copy.deepcopy(self.settings)

    # --- building ---------------------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        if self.needs_eot and tokenizer.eot_id is None:
            raise UserError(f"task={self.name} needs a tokenizer with <|endoftext|> (tokenizer=gpt2), "
                             f"not {tokenizer.to_config()['name']}")

    def data(self, source: Any, tokenizer: Tokenizer, data: dict, seed: int) -> Splits:
        """The train / val (/ test) datasets from ``source`` (the data config's object) and ``data`` (its settings)."""
        raise NotImplementedError

    def adapt(self, model: GPTModel) -> GPTModel:
        """The model this task trains, from a base GPTModel (in place): a new head, adapters, frozen parts.
        Called the same way at training time and when a checkpoint is loaded."""
        lora = self.settings.get("lora") or {}
        if lora.get("rank"):
            apply_lora(model, lora["rank"], lora["alpha"])
        return model

    # --- training ---------------------------------------------------------------------------------------
    def step(self, model: GPTModel, batch: Any) -> Metrics:
        """The metrics of one batch; ``loss`` is what is minimised."""
        raise NotImplementedError

    def test_step(self, model: GPTModel, batch: Any, tokenizer: Tokenizer) -> Metrics | list[dict]:
        """Metrics of a test batch, or records (e.g. answers) that ``report`` writes."""
        return self.step(model, batch)

    def epoch_metrics(self, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Metrics derived from an epoch's means (e.g. perplexity from the loss)."""
        return means

    @staticmethod
    def tokens(batch: Any) -> int:
        """Input tokens in a batch (for tokens/s and tokens seen)."""
        first = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        return first.numel()

    # --- after training / at load time -------------------------------------------------------------------
    def report(self, metrics: dict[str, float], records: list[dict], run_dir: Any, best: str) -> list[str]:
        """Lines printed at the end of training (and files written: e.g. test answers)."""
        return []

    def check_command(self, command: str, ckpt: str) -> None:
        """Refuse, in one line, a command that cannot use this task's checkpoints."""
        if command not in self.loaded_by:
            raise UserError(f"{ckpt} holds a {self.name} model, which {command}.py cannot use "
                             f"(it is used by: {', '.join(f'{c}.py' for c in self.loaded_by) or 'train.py only'})")

    def prompt(self, text: str) -> str:
        """The text the model sees for a user's prompt (an instruction model wraps it in its template)."""
        return text
