"""How well a model predicts a text: mean next-token cross-entropy (loss) and its exponential (perplexity). Pure torch."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.errors import UserError


@torch.no_grad()
def mean_next_token_loss(model: nn.Module, ids: torch.Tensor, max_length: int, batch_size: int) -> tuple[float, int]:
    """Mean cross-entropy of predicting ids[1:] from what precedes them, and how many tokens were scored.

    The text is cut into windows of ``max_length`` that do not overlap (the last one may be shorter), so every
    token after the first is scored exactly once, seeing the earlier tokens of its own window.
    """
    if len(ids) < 2:
        raise UserError(f"the text has {len(ids)} token(s); at least 2 are needed to score a next token")
    if max_length <= 0 or batch_size <= 0:
        raise UserError(f"max_length and batch_size must be positive, got {max_length} and {batch_size}")
    inputs, targets = ids[:-1], ids[1:]
    n_full = len(inputs) // max_length
    x = inputs[: n_full * max_length].view(n_full, max_length)  # (N, L) full windows
    y = targets[: n_full * max_length].view(n_full, max_length)
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n_full, batch_size)]
    if len(inputs) > n_full * max_length:
        batches.append((inputs[n_full * max_length :][None], targets[n_full * max_length :][None]))  # (1, rest)
    total = 0.0
    for xb, yb in batches:
        logits = model(xb)  # (B, L, V)
        total += F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="sum").item()
    return total / len(targets), len(targets)
