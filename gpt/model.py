"""The GPT model, built the way the book builds it. Pure torch: no Lightning, no Hydra.

Shapes in comments: B batch, T sequence length, C emb_dim, H n_heads, D head dim (C // H), V vocab_size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.attention import CausalAttentionHeads, MultiHeadAttention
from gpt.errors import UserError
from gpt.registry import choose


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
    # The parts, each a name from PARTS below or a dotted path to a class of your own (README, "Extending").
    # Defaults, so checkpoints written before a field existed still load: the book's GPT-2.
    attn_impl: str = "sdpa"  # "sdpa" (fused kernel), "explicit" (the book's softmax(QK^T)V), "wrapper" (per head)
    norm: str = "layernorm"
    ffn: str = "gelu"
    pos: str = "learned"

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
        for key in PARTS:  # an unknown part is refused here, when the config is read
            part_class(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


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
    """Refuse, before anything is allocated, a model that cannot be built in the memory ``device`` has free. The
    model is first built on the meta device (shapes only, no memory), so any choice of parts is measured."""
    free = available_bytes(device)
    if free is None:
        return
    with torch.device("meta"):
        shape = GPTModel(cfg)
    need = sum(t.numel() * t.element_size() for t in (*shape.parameters(), *shape.buffers()))
    if need > free:
        raise UserError(
            f"a model of {shape.num_parameters():,} parameters with model.context_length={cfg.context_length} "
            f"needs {need / 2**30:.1f} GiB for its weights and buffers and {device.type} has {free / 2**30:.1f} GiB "
            "free; choose a smaller model or context length"
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


class LearnedPositions(nn.Embedding):
    """GPT-2's absolute positions: one learned vector per position, added to the token embeddings."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg.context_length, cfg.emb_dim)


def _book_attention(cls, **kwargs):
    """An attention layer of gpt/attention.py, built with the book's signature from a GPTConfig."""
    return lambda cfg: cls(cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads, cfg.qkv_bias,
                           **kwargs)


# The parts a GPTConfig chooses by name: model.<key> -> {name: a function (or class) that builds it from the config}.
# A dotted path instead of a name (my_package.my_module.MyNorm) builds a class of your own as MyNorm(cfg).
PARTS = {
    "attn_impl": {
        "sdpa": _book_attention(MultiHeadAttention, fused=True),
        "explicit": _book_attention(MultiHeadAttention, fused=False),
        "wrapper": _book_attention(CausalAttentionHeads),
    },
    "norm": {"layernorm": lambda cfg: LayerNorm(cfg.emb_dim)},
    "ffn": {"gelu": FeedForward},
    "pos": {"learned": LearnedPositions},
}


def part_class(cfg: GPTConfig, key: str):
    return choose(f"model.{key}", getattr(cfg, key), PARTS[key])


def build_part(cfg: GPTConfig, key: str) -> nn.Module:
    """The part ``model.<key>`` names, built from the config."""
    return part_class(cfg, key)(cfg)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = build_part(cfg, "norm")
        self.att = build_part(cfg, "attn_impl")
        self.norm2 = build_part(cfg, "norm")
        self.ff = build_part(cfg, "ffn")
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int | torch.Tensor = 0) -> torch.Tensor:
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
        self.pos_emb = build_part(cfg, "pos")
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
        start = 0 if cache is None else cache.length  # an int, or a (B,) tensor: each row's own length
        per_row = isinstance(start, torch.Tensor)
        end = int(start.max()) + T if per_row else start + T
        if end > self.cfg.context_length:
            raise ValueError(f"sequence of {end} tokens is longer than the context length {self.cfg.context_length}")
        if per_row:
            pos = start[:, None] + torch.arange(T, device=idx.device)  # (B, T): each row continues its own sequence
        else:
            pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if cache is None else cache.layer(i, end), start)
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

    @classmethod
    def from_config(cls, fields: dict) -> GPTModel:
        """A model from the plain ``model`` fields stored in configs and checkpoints."""
        return cls(GPTConfig(**fields))


class KVCache:
    """Every layer's keys and values for the positions decoded so far, in one buffer allocated up front.

    Decoding one more token then costs one position's work per layer instead of re-running the whole prefix.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype):
        head_dim = cfg.emb_dim // cfg.n_heads
        # (layer, key/value, B, H, position, D)
        self.kv = torch.zeros(cfg.n_layers, 2, batch_size, cfg.n_heads, max_len, head_dim, device=device, dtype=dtype)
        # Positions stored; GPTModel advances it after each forward. A (B,) long tensor instead of an int gives
        # each row its own length (rows decoded together from different starts, one token per step; advanced in
        # place, so a view of a larger lengths tensor works).
        self.length: int | torch.Tensor = 0

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def layer(self, i: int, end: int) -> torch.Tensor:
        """Layer ``i``'s (2, B, H, max_len, D) buffer, checked to have room up to position ``end``."""
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        return self.kv[i]
