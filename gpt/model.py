"""The GPT model, built the way the book builds it. Pure torch: no Lightning, no Hydra.

Shapes in comments: B batch, T sequence length, C emb_dim, H n_heads, D head dim (C // H), V vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.errors import UserError

ATTN_IMPLS = ("sdpa", "explicit")


@dataclass
class GPTConfig:
    """A model's shape. The values live in conf/model/*.yaml; this class only checks them."""

    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float
    qkv_bias: bool
    tie_weights: bool
    # "sdpa": torch's fused scaled_dot_product_attention (fast, the default); "explicit": the book's softmax(QK^T)V.
    # The one field with a default, so checkpoints written before it existed still load.
    attn_impl: str = "sdpa"

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.emb_dim % self.n_heads:
            raise UserError(
                f"model.emb_dim={self.emb_dim} is not divisible by model.n_heads={self.n_heads}; "
                "choose sizes where each head gets emb_dim // n_heads dimensions"
            )
        if not isinstance(self.drop_rate, (int, float)) or not 0.0 <= self.drop_rate < 1.0:
            raise UserError(f"model.drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.attn_impl not in ATTN_IMPLS:
            raise UserError(f"model.attn_impl must be one of {', '.join(ATTN_IMPLS)}, got {self.attn_impl!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def num_parameters(self) -> int:
        """What ``GPTModel(cfg).num_parameters()`` will be, computed without building it."""
        C, V = self.emb_dim, self.vocab_size
        block = 3 * (C * C + C * self.qkv_bias) + (C * C + C) + (8 * C * C + 5 * C) + 4 * C  # attn, ff, 2 norms
        return V * C + self.context_length * C + self.n_layers * block + 2 * C + (0 if self.tie_weights else V * C)

    def build_bytes(self) -> int:
        """Memory that building a GPTModel of this shape takes: fp32 weights and each layer's (T, T) causal mask
        (one byte per element, plus one more mask while a layer builds its own)."""
        return 4 * self.num_parameters() + (self.n_layers + 1) * self.context_length**2


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: the GPU's free memory, or for the CPU the kernel's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None  # meta (nothing is allocated), mps, ...: no check
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def check_fits(cfg: GPTConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, a model that cannot be built in the memory ``device`` has free."""
    need, free = cfg.build_bytes(), available_bytes(device)
    if free is not None and need > free:
        raise UserError(
            f"a model of {cfg.num_parameters():,} parameters with model.context_length={cfg.context_length} needs "
            f"{need / 2**30:.1f} GiB to build (weights and a {cfg.context_length} x {cfg.context_length} mask per "
            f"layer) and {device.type} has {free / 2**30:.1f} GiB free; choose a smaller model or context length"
        )


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift (learned).

    y = (x - mean) / sqrt(var + eps) * scale + shift, with the biased variance, as GPT-2 does.
    F.layer_norm computes exactly that in one fused kernel.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GELU with GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Position-wise MLP: expand to 4x width, GELU, project back."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            GELU(),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: each position attends to itself and the positions before it.

    With a KV cache (``kv``, this layer's slice of a ``KVCache``), the new tokens' keys and values are written
    at positions ``start:start+T`` and the queries attend to everything stored up to there.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.attn_impl = cfg.attn_impl
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.dropout = nn.Dropout(cfg.drop_rate)
        # True above the diagonal: the future positions a query may not see.
        mask = torch.triu(torch.ones(cfg.context_length, cfg.context_length, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q = self._split_heads(self.W_query(x))  # (B, H, T, D)
        k = self._split_heads(self.W_key(x))
        v = self._split_heads(self.W_value(x))
        if kv is not None:  # kv: (2, B, H, max_len, D); keys and values of the positions before `start` are there
            kv[0, :, :, start : start + T] = k
            kv[1, :, :, start : start + T] = v
            k, v = kv[0, :, :, : start + T], kv[1, :, :, : start + T]  # (B, H, start + T, D)
        mask = self.mask[start : start + T, : start + T]  # query i is position start + i

        if self.attn_impl == "explicit":
            scores = q @ k.transpose(2, 3)  # (B, H, T, start + T): how much each query matches each key
            scores = scores.masked_fill(mask, float("-inf"))
            weights = torch.softmax(scores / math.sqrt(self.head_dim), dim=-1)
            weights = self.dropout(weights)
            context = weights @ v  # (B, H, T, D): weighted sum of the values
        else:
            # The same computation in one fused kernel that never stores the (T, T) weights. Its attn_mask is
            # True where attending is allowed; is_causal=True is the plain causal case without a mask tensor.
            dropout_p = self.dropout.p if self.training else 0.0
            if start == 0:
                context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            elif T == 1:  # one new token (decoding) sees every stored position: nothing to mask
                context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            else:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, dropout_p=dropout_p)

        context = context.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.out_proj(context)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.att = MultiHeadAttention(cfg)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv, start))  # shortcut connection around attention
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))  # and around the feed-forward
        return x


class GPTModel(nn.Module):
    """Token + position embeddings -> n_layers transformer blocks -> final norm -> logits over the vocabulary."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        check_fits(cfg, torch.get_default_device())  # before the first allocation: an OOM kill says nothing
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_weights:
            # One Parameter in two places (GPT-2's choice): not a copy, so both always hold the same values.
            self.out_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation: N(0, 0.02) for matrices and embeddings, zero biases.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V). With a ``cache``, idx continues the tokens it holds."""
        return self.out_head(self.hidden_states(idx, cache))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> the final-normed features (B, T, C) that the output head turns into logits."""
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.cfg.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the context length {self.cfg.context_length}"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if cache is None else cache.layer(i, start + T), start)
        if cache is not None:
            cache.length += T
        return self.final_norm(x)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for up to ``max_len`` positions (at most the context length) of ``batch_size`` rows."""
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, min(max_len, self.cfg.context_length), p.device, p.dtype)

    def num_parameters(self) -> int:
        """Parameters counted once each (a tied head is not counted twice)."""
        return sum(p.numel() for p in self.parameters())


class KVCache:
    """Every layer's keys and values for the positions decoded so far, in one buffer allocated up front.

    Decoding one more token then costs one position's work per layer instead of re-running the whole prefix.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype):
        head_dim = cfg.emb_dim // cfg.n_heads
        # (layer, key/value, B, H, position, D)
        self.kv = torch.zeros(cfg.n_layers, 2, batch_size, cfg.n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.length = 0  # positions stored; GPTModel advances it after each forward

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def layer(self, i: int, end: int) -> torch.Tensor:
        """Layer ``i``'s (2, B, H, max_len, D) buffer, checked to have room up to position ``end``."""
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        return self.kv[i]
