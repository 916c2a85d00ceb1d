"""The optimizer and its learning-rate schedule, shared by every task. Pure torch.

AdamW with weight decay on matrices only (linear weights, embeddings; never biases or norm scales), and a linear
warmup followed by a cosine decay to ``lr * min_lr_ratio`` at the last step.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_with_schedule(
    parameters, optim: dict, total_steps: int, fused: bool
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the ``parameters`` that train, and its per-step schedule; ``optim`` is the ``optim`` config."""
    params = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), fused=fused)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, optim["warmup_steps"], total_steps, optim["min_lr_ratio"])
    )
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
