"""The optimizer and its learning-rate schedule, shared by every task. Pure torch.

AdamW with weight decay on matrices only (linear weights, embeddings; never biases or norm scales), and a linear
warmup followed by a cosine decay to ``lr * min_lr_ratio`` at the last step, or, with a wall-clock budget
(``TimeBudget``), at the end of the budget: a run cut short by time still finishes its decay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from gpt.errors import UserError


def warmup_cosine_at(step: int, warmup_steps: int, progress: float, min_lr_ratio: float) -> float:
    """LR multiplier: a cosine from 1 at ``progress`` 0 down to ``min_lr_ratio`` at ``progress`` 1 (the fraction of
    the run done, in steps or in time), capped by a linear warmup from 0 over the first ``warmup_steps`` steps
    unless the run is over (a time budget that runs out during warmup still ends at the floor)."""
    progress = min(1.0, max(0.0, progress))
    cosine = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min(cosine, (step + 1) / warmup_steps) if step < warmup_steps and progress < 1 else cosine


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The schedule over ``total_steps``: the decay starts after warmup and ends at the last step."""
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return warmup_cosine_at(step, warmup_steps, progress, min_lr_ratio)


class TimeBudget:
    """How far a run is through a wall-clock budget of ``budget_s`` seconds counted from ``started`` (the
    process's start, so start-up and tokenizer training are paid from it). Training runs from ``start()`` until
    ``reserve_s + tail_s`` before the end (kept for the last checkpoint and exit, and for the last validation,
    whose duration the trainer measures into ``tail_s``), and ``progress()`` goes from 0 to 1 over that time,
    driving the cosine instead of the step count.

    Resumable: ``state_dict()`` holds the budget spent and the progress made; a resumed run spends what is left
    and carries the progress on from where it was."""

    def __init__(self, budget_s: float, started: float, reserve_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if budget_s <= 0:
            raise UserError(f"budget_s={budget_s}: a time budget must be a positive number of seconds")
        self.budget_s, self.started, self.reserve_s, self.clock = budget_s, started, reserve_s, clock
        self.spent_before, self.progress_before = 0.0, 0.0
        self.tail_s = 0.0
        self._start: float | None = None
        self._end = 0.0

    def start(self) -> None:
        """Training begins now: whatever this process has spent so far is no longer available to it."""
        self._start = self.clock()
        self._end = self.started + self.budget_s - self.spent_before - self.reserve_s

    def progress(self) -> float:
        if self._start is None:
            return self.progress_before
        now, end = self.clock(), self._end - self.tail_s
        done = 1.0 if end <= self._start else (now - self._start) / (end - self._start)
        return min(1.0, self.progress_before + (1 - self.progress_before) * done)

    def done(self) -> bool:
        return self.progress() >= 1.0

    def state_dict(self) -> dict:
        return {"spent_s": self.spent_before + self.clock() - self.started, "progress": self.progress()}

    def load_state_dict(self, state: dict) -> None:
        self.spent_before, self.progress_before = state["spent_s"], state["progress"]


def adamw_with_schedule(
    parameters, optim: dict, total_steps: int, fused: bool, budget: TimeBudget | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the ``parameters`` that train, and its per-step schedule, fitted to ``total_steps`` or, given a
    ``budget``, to its time; ``optim`` is the ``optim`` config."""
    params = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), fused=fused)
    warmup, floor = optim["warmup_steps"], optim["min_lr_ratio"]
    if budget is None:
        multiplier = lambda step: warmup_cosine(step, warmup, total_steps, floor)  # noqa: E731
    else:
        multiplier = lambda step: warmup_cosine_at(step, warmup, budget.progress(), floor)  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, schedule


def set_optim_values(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR,
                     optim: dict) -> None:
    """Puts ``optim``'s lr, betas and weight decay into an optimizer and schedule restored from a checkpoint
    (which hold the values they were saved with); the lr is the schedule's at its current step, as ``schedule``
    itself computes it. On a fresh optimizer it changes nothing."""
    schedule.base_lrs = [optim["lr"]] * len(optimizer.param_groups)
    for group, decay, factor in zip(optimizer.param_groups, (optim["weight_decay"], 0.0), schedule.lr_lambdas):
        group.update(initial_lr=optim["lr"], betas=tuple(optim["betas"]), weight_decay=decay,
                     lr=optim["lr"] * factor(schedule.last_epoch))
