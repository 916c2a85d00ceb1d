"""Sizes chosen from the corpus and the time budget: the values written ``auto`` in a recipe (conf/experiment/
speedrun.yaml) are filled in here, before anything is built.

Two rules, both about what a short run on a small CPU can learn:
- the vocabulary follows the corpus: about one token type per thousand characters, a power of two between 512 and
  4096. Every token's embedding and output row must be seen often enough to train, and a small corpus gives few
  examples of rare tokens (1 MB -> 1024 tokens, 4 MB -> 4096);
- the width follows the budget: the compute to train a wider model well grows with it, so emb_dim is 64 x
  round(sqrt(budget_s / 50)), between 128 and 512 (200 s -> 128, 10 minutes -> 192, 30 minutes -> 384), with
  heads of 32 dimensions.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from gpt.errors import UserError

AUTO = "auto"


def speedrun_sizes(n_chars: int, budget_s: float) -> dict:
    """``tokenizer.vocab_size``, ``model.emb_dim`` and ``model.n_heads`` for a corpus of ``n_chars`` characters
    trained for ``budget_s`` seconds."""
    vocab = 2 ** min(12, max(9, round(math.log2(max(n_chars, 1) / 1000))))
    emb_dim = 64 * min(8, max(2, round(math.sqrt(budget_s / 50))))
    return {"tokenizer.vocab_size": vocab, "model.emb_dim": emb_dim, "model.n_heads": emb_dim // 32}


def fill_auto(cfg: DictConfig) -> None:
    """Replaces every ``auto`` among the sizes ``speedrun_sizes`` chooses; needs the corpus and a time budget."""
    keys = [k for k in speedrun_sizes(1, 1) if OmegaConf.select(cfg, k) == AUTO]
    if not keys:
        return
    import hydra

    from gpt.data.sources import corpus_text
    from gpt.training.setup import budget_seconds

    budget = budget_seconds(cfg)
    if budget is None:
        raise UserError(f"{', '.join(keys)}=auto are sized from a time budget: give budget_s=<seconds>")
    n_chars = len(corpus_text(hydra.utils.instantiate(cfg.data.source)))
    sizes = speedrun_sizes(n_chars, budget)
    for key in keys:
        group, name = key.split(".")
        cfg[group][name] = sizes[key]
    print(f"sized for {n_chars:,} characters and {budget:g} s: " + ", ".join(f"{k}={sizes[k]}" for k in keys))
