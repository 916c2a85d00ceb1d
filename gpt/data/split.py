"""Train / val / test splits of a list of examples, the same for every task."""

from __future__ import annotations

import random

from gpt.errors import UserError


def split(items: list, fractions: list[float], seed: int | None) -> list[list]:
    """Consecutive parts of ``items`` of the given fractions (train, val, test; the test part takes the remainder),
    e.g. SMS spam's [0.7, 0.1, 0.2] or the instruction data's [0.85, 0.1, 0.05]. ``seed`` shuffles first; None
    keeps the given order."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"data.split must be three positive fractions summing to 1 (train, val, test), got {fractions}")
    items = list(items)
    if seed is not None:
        random.Random(seed).shuffle(items)
    n_train, n_val = int(len(items) * fractions[0]), int(len(items) * fractions[1])
    return [items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]]
