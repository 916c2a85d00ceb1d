"""The GPT model, built the way the book builds it. Pure torch: no Lightning, no Hydra.

Shapes in comments: B batch, T sequence length, C emb_dim, H n_heads, D head dim (C // H), V vocab_size.
"""

from __future__ import annotations

import math
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
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    ffn: str = "gelu"  # "gelu" (4x MLP) | "swiglu"
    pos: str = "learned"  # "learned" (a table added to the embeddings) | "rope" (q and k rotated in attention)
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None = n_heads
    qk_norm: bool = False  # RMSNorm on each head's queries and keys
    bias: bool = True  # biases in the attention's out_proj and the feed-forward (qkv_bias is its own switch)
    scaled_init: bool = False  # GPT-2's N(0, 0.02 / sqrt(2 n_layers)) for out_proj and the feed-forward's last layer
    value_embeds: bool = False  # a token embedding per layer added to its attention's values (ValueEmbeddings)

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
        if not isinstance(self.kv_heads, int) or self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            raise UserError(f"model.n_kv_heads={self.n_kv_heads} must be a positive divisor of "
                             f"model.n_heads={self.n_heads} (or null for n_heads)")
        if self.pos == "rope" and (self.emb_dim // self.n_heads) % 2:
            raise UserError(f"model.pos=rope rotates pairs of features, and the head size emb_dim // n_heads = "
                             f"{self.emb_dim // self.n_heads} is odd; choose an even head size")
        modern = (self.kv_heads != self.n_heads or self.qk_norm or self.pos == "rope" or not self.bias
                  or self.value_embeds)
        if self.attn_impl == "wrapper" and modern:
            raise UserError("model.attn_impl=wrapper is the book's per-head stage of GPT-2's attention; n_kv_heads, "
                             "qk_norm, pos=rope, bias=false and value_embeds need attn_impl=sdpa or explicit")
        for key in PARTS:  # an unknown part is refused here, when the config is read
            part_class(self, key)

    @property
    def kv_heads(self) -> int:
        """How many key/value heads attention has: n_kv_heads, or n_heads when that is null."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

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
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim, bias=cfg.bias),
            GELU(),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim, bias=cfg.bias),
        )

    @property
    def out_proj(self) -> nn.Linear:
        """The layer that writes into the residual stream (model.scaled_init)."""
        return self.layers[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer 2020, LLaMA): out_proj(silu(gate(x)) * up(x)).

    Three matrices instead of two, so the hidden width is 8/3 emb_dim (rounded to a multiple of 64) rather than
    4 emb_dim: about the parameters of the GELU MLP.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = max(64, round(8 * cfg.emb_dim / 3 / 64) * 64)
        self.gate = nn.Linear(cfg.emb_dim, hidden, bias=cfg.bias)
        self.up = nn.Linear(cfg.emb_dim, hidden, bias=cfg.bias)
        self.out_proj = nn.Linear(hidden, cfg.emb_dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.silu(self.gate(x)) * self.up(x))


class LearnedPositions(nn.Embedding):
    """GPT-2's absolute positions: one learned vector per position, added to the token embeddings."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg.context_length, cfg.emb_dim)


class RotaryPositions(nn.Module):
    """Rotary position embeddings (RoPE, Su et al. 2021): nothing is added to the embeddings; instead attention
    rotates each head's queries and keys by angles proportional to their positions, so q . k depends on the
    positions only through their difference. Pairs (i, i + D/2) of features turn at frequency base^(-2i/D).
    No parameters: the angles are a fixed table."""

    def __init__(self, cfg: GPTConfig, base: float = 10_000.0):
        super().__init__()
        head_dim = cfg.emb_dim // cfg.n_heads
        freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        angles = torch.outer(torch.arange(cfg.context_length, dtype=torch.float32), freqs)  # (context, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, H, T, D) of positions start .. start + T - 1, each rotated by its position's angles. ``start``
        may be a (B,) tensor: each row at its own position (a server's batch)."""
        T = q.shape[-2]
        if isinstance(start, torch.Tensor):
            positions = start[:, None] + torch.arange(T, device=start.device)  # (B, T)
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, D / 2)
        else:
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
        return self._turn(q, cos, sin), self._turn(k, cos, sin)

    @staticmethod
    def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class ValueEmbeddings(nn.Module):
    """One more token embedding per layer, added to that layer's attention values (the modded-nanogpt speedrun's
    value embeddings). A token's value then carries its identity straight from a table, whatever the residual
    stream has made of it, which a shallow model learns from fast. It depends on the token alone, so the KV cache
    stores the sum like any value. The tables start at N(0, 1), far above GPT-2's 0.02: on the KJV at 860 steps
    (README, Speedrun; tables mixed in by learned weights) std 0.05 / 0.2 / 1 / 3 gave 1.659 / 1.656 / 1.652 /
    1.653 bits/char, and the plain sum, this class, 1.650."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        width = cfg.kv_heads * (cfg.emb_dim // cfg.n_heads)  # a value row: every key/value head side by side
        self.tables = nn.ModuleList(nn.Embedding(cfg.vocab_size, width) for _ in range(cfg.n_layers))
        for table in self.tables:
            nn.init.normal_(table.weight, std=1.0)

    def forward(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """idx (B, T) -> one (B, T, H_kv * D) tensor per layer."""
        return [table(idx) for table in self.tables]


def _book_attention(cls, **kwargs):
    """An attention layer of gpt/attention.py, built with the book's signature from a GPTConfig."""
    return lambda cfg: cls(cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads, cfg.qkv_bias,
                           **kwargs)


def _batched_attention(fused: bool):
    """MultiHeadAttention from a GPTConfig, with its grouped-query, QK-norm and bias choices."""
    return lambda cfg: MultiHeadAttention(cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads,
                                          cfg.qkv_bias, fused, num_kv_heads=cfg.kv_heads, qk_norm=cfg.qk_norm,
                                          bias=cfg.bias)


# The parts a GPTConfig chooses by name: model.<key> -> {name: a function (or class) that builds it from the config}.
# A dotted path instead of a name (my_package.my_module.MyNorm) builds a class of your own as MyNorm(cfg).
PARTS = {
    "attn_impl": {
        "sdpa": _batched_attention(fused=True),
        "explicit": _batched_attention(fused=False),
        "wrapper": _book_attention(CausalAttentionHeads),
    },
    "norm": {"layernorm": lambda cfg: LayerNorm(cfg.emb_dim), "rmsnorm": lambda cfg: nn.RMSNorm(cfg.emb_dim, eps=1e-5)},
    "ffn": {"gelu": FeedForward, "swiglu": SwiGLU},
    "pos": {"learned": LearnedPositions, "rope": RotaryPositions},
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

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int | torch.Tensor = 0,
                rotate=None, value_embed: torch.Tensor | None = None) -> torch.Tensor:
        # rotate: model.pos=rope's rotation of q and k; value_embed: model.value_embeds' rows for this layer. Each
        # is handed to attention only when that part is on (a plug-in attention of yours needs only those it uses).
        extra = {k: v for k, v in (("rotate", rotate), ("value_embed", value_embed)) if v is not None}
        h = self.att(self.norm1(x), kv, start, **extra)
        x = x + self.drop_shortcut(h)  # shortcut connection around attention
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
        self.final_norm = build_part(cfg, "norm")
        self.out_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        self.value_embeds = ValueEmbeddings(cfg) if cfg.value_embeds else None  # its own init, after GPT-2's
        if cfg.scaled_init:
            self._scale_residual_projections()
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

    def _scale_residual_projections(self) -> None:
        # GPT-2 (paper, section 2.3): each block adds two projections to the residual stream, so their initial std
        # shrinks by sqrt(2 n_layers) to keep the stream's variance from growing with depth.
        std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for block in self.trf_blocks:
            for part in (block.att, block.ff):
                if not isinstance(getattr(part, "out_proj", None), nn.Linear):
                    raise UserError(f"model.scaled_init needs attention and feed-forward parts with an out_proj "
                                     f"Linear layer; {type(part).__name__} has none")
                nn.init.normal_(part.out_proj.weight, mean=0.0, std=std)

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
        rotate = getattr(self.pos_emb, "rotate", None)  # rotary positions turn q and k inside attention instead
        x = self.tok_emb(idx)  # (B, T, C)
        if rotate is None:
            if per_row:
                pos = start[:, None] + torch.arange(T, device=idx.device)  # (B, T): each row continues its own
            else:
                pos = torch.arange(start, start + T, device=idx.device)
            x = x + self.pos_emb(pos)
        x = self.drop_emb(x)
        value_embeds = [None] * len(self.trf_blocks) if self.value_embeds is None else self.value_embeds(idx)
        for i, (block, value_embed) in enumerate(zip(self.trf_blocks, value_embeds)):
            x = block(x, None if cache is None else cache.layer(i, end), start, rotate, value_embed)
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
        # (layer, key/value, B, key/value heads, position, D): grouped-query attention stores n_kv_heads heads
        self.kv = torch.zeros(cfg.n_layers, 2, batch_size, cfg.kv_heads, max_len, head_dim, device=device, dtype=dtype)
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
