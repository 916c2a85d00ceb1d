"""A new attention variant in one file: local (sliding-window) attention, each token sees itself and the
WINDOW - 1 tokens before it, as in Longformer or Mistral."""

import torch

from gpt.attention import MultiHeadAttention


class LocalAttention(MultiHeadAttention):
    WINDOW = 16

    def __init__(self, cfg):
        super().__init__(cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads, cfg.qkv_bias)
        i = torch.arange(cfg.context_length)
        self.mask |= i[:, None] - i[None, :] >= self.WINDOW  # True = may not attend: the future, and now the far past
