"""Sizes chosen from the corpus and the time budget: the values written ``auto`` in a recipe (conf/experiment/
speedrun.yaml) are filled in here, before anything is built.

Three rules, all about what a short run on a small CPU can learn:
- the vocabulary follows the corpus: about one token type per thousand characters, a power of two between 512 and
  4096. Every token's embedding and output row must be seen often enough to train, and a small corpus gives few
  examples of rare tokens (1 MB -> 1024 tokens, 4 MB -> 4096);
- the width follows the budget: the compute to train a wider model well grows with it, so emb_dim is 64 x
  round(sqrt(budget_s / 50)), between 128 and 512 (200 s -> 128, 10 minutes -> 192, 30 minutes -> 384), with
  heads of 64 dimensions (two heads of 64 learnt more in 88 s on the KJV than four of 32: 1.692 against 1.703
  bits/char, and fewer, larger attention products run faster on a CPU);
- dropout follows how often the run will read the text: 0.1 where it reads it more than three times (a small text
  for the budget: at 88-106 s the 1 MB text went from 2.128 to 1.852 bits/char with it, while the KJV, read about
  1.6 times, went from 1.697 to 1.738), else none. The passes are estimated from the ~80,000 characters a second
  the recipe trains on at 128 wide on a 2-core CPU.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from gpt.errors import UserError

AUTO = "auto"


HEAD_DIM = 64
CHARS_PER_S = 80_000  # characters the recipe trains on per second of its budget (2-core Zen 4, bf16-mixed, 3 x 128)


def speedrun_sizes(n_chars: int, budget_s: float, emb_dim: int | None = None) -> dict:
    """``tokenizer.vocab_size``, ``model.emb_dim``, ``model.n_heads`` and ``model.drop_rate`` for a corpus of
    ``n_chars`` characters trained for ``budget_s`` seconds; the heads divide ``emb_dim`` where it is given rather
    than chosen."""
    vocab = 2 ** min(12, max(9, round(math.log2(max(n_chars, 1) / 1000))))
    emb_dim = emb_dim or 64 * min(8, max(2, round(math.sqrt(budget_s / 50))))
    heads = max(h for h in range(1, max(1, emb_dim // HEAD_DIM) + 1) if emb_dim % h == 0)
    passes = CHARS_PER_S * budget_s / max(n_chars, 1)
    return {"tokenizer.vocab_size": vocab, "model.emb_dim": emb_dim, "model.n_heads": heads,
            "model.drop_rate": 0.1 if passes > 3 else 0.0}


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
    given = cfg.model.emb_dim if "model.emb_dim" not in keys else None
    sizes = speedrun_sizes(n_chars, budget, given)
    for key in keys:
        group, name = key.split(".")
        cfg[group][name] = sizes[key]
    print(f"sized for {n_chars:,} characters and {budget:g} s: " + ", ".join(f"{k}={sizes[k]}" for k in keys))
