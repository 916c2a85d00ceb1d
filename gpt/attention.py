"""Self-attention in the book's stages (chapter 3), from a weight-free dot product to the batched multi-head layer
GPTModel uses. Pure torch. Each class has the book's name and signature and creates its parameters in the book's
order, so the book's ``torch.manual_seed(...)`` calls give the tensors the book prints.

Shapes: B batch, T tokens, d_in input width, d_out output width; in the multi-head layers H heads of D = d_out // H.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

QKV = ("W_query", "W_key", "W_value")


def simplified_self_attention(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 3.3, no trainable weights: each token's scores are its dot products with every token (T, T), the
    softmax of a row is that token's attention weights, and its context vector the weighted sum of the inputs.
    inputs (T, d_in) -> (weights (T, T), context vectors (T, d_in))."""
    weights = torch.softmax(inputs @ inputs.T, dim=-1)
    return weights, weights @ inputs


class SelfAttention_v1(nn.Module):
    """Section 3.4: queries, keys and values are the inputs times three trainable (d_in, d_out) matrices, and the
    scores are scaled by sqrt(d_out) before the softmax. inputs (T, d_in) -> context vectors (T, d_out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = x @ self.W_key
        queries = x @ self.W_query
        values = x @ self.W_value
        attn_scores = queries @ keys.T  # (T, T)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


class SelfAttention_v2(nn.Module):
    """The same computation with ``nn.Linear`` layers (better initialised; an optional bias). nn.Linear stores its
    weight as (d_out, d_in): ``SelfAttention_v1`` given these weights transposed computes the same outputs."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)
        attn_scores = queries @ keys.T
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values


def causal_attention_weights(
    queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, dropout: nn.Dropout, start: int = 0
) -> torch.Tensor:
    """Section 3.5: softmax(Q K^T / sqrt(D)) with every future position set to -inf first (so its weight is 0 and
    each row still sums to 1), then dropout on the weights. ``mask`` is True above the diagonal; query i is
    position ``start + i``. queries (..., T, D), keys (..., start + T, D) -> weights (..., T, start + T)."""
    T = queries.shape[-2]
    attn_scores = queries @ keys.transpose(-2, -1)
    attn_scores = attn_scores.masked_fill(mask[start : start + T, : start + T], float("-inf"))
    attn_weights = torch.softmax(attn_scores / math.sqrt(keys.shape[-1]), dim=-1)
    return dropout(attn_weights)


def write_kv_cache(
    kv: torch.Tensor, start: int, keys: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Store the new tokens' keys and values at positions ``start:start+T`` of ``kv`` (2, ..., max_len, D), where
    the earlier positions' already are, and return every stored key and value up to there (..., start + T, D)."""
    end = start + keys.shape[-2]
    kv[0, ..., start:end, :] = keys
    kv[1, ..., start:end, :] = values
    return kv[0, ..., :end, :], kv[1, ..., :end, :]


def causal_mask(context_length: int) -> torch.Tensor:
    """True above the diagonal: the future positions a query may not see."""
    return torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), diagonal=1)


class CausalAttention(nn.Module):
    """Section 3.5: ``SelfAttention_v2`` on batches (B, T, d_in) in which a token attends only to itself and the
    tokens before it, with dropout on the attention weights.

    With a KV cache slice ``kv`` (2, B, max_len, d_out) the new tokens' keys and values are stored at positions
    ``start:start+T`` and the queries attend to everything stored up to there (GPTModel's ``attn_impl=wrapper``).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        keys = self.W_key(x)  # (B, T, d_out)
        queries = self.W_query(x)
        values = self.W_value(x)
        if kv is not None:
            keys, values = write_kv_cache(kv, start, keys, values)  # (B, start + T, d_out)
        attn_weights = causal_attention_weights(queries, keys, self.mask, self.dropout, start)
        return attn_weights @ values  # (B, T, d_out)


class MultiHeadAttentionWrapper(nn.Module):
    """Section 3.6.1: ``num_heads`` independent ``CausalAttention`` heads run one after another, their outputs side
    by side: (B, T, d_in) -> (B, T, num_heads * d_out)."""

    def __init__(
        self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int, qkv_bias: bool = False
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(num_heads)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)


class MultiHeadAttention(nn.Module):
    """Section 3.6.2: all heads in one batched computation. One (d_out, d_in) matrix each for queries, keys and
    values holds every head's D = d_out // num_heads rows; the heads' outputs, side by side, go through ``out_proj``.
    (B, T, d_in) -> (B, T, d_out).

    ``fused=True`` computes the same attention with torch's ``scaled_dot_product_attention`` kernel, which never
    stores the (T, T) weights (GPTModel's ``attn_impl=sdpa``); ``False`` is the book's explicit softmax(QK^T)V.
    With a KV cache slice ``kv`` (2, B, H_kv, max_len, D) (H_kv = num_kv_heads, num_heads unless set), the new
    tokens' keys and values are written at positions ``start:start+T`` and the queries attend to everything stored
    up to there.

    A state dict in ``MultiHeadAttentionWrapper``'s per-head layout (``heads.<h>.W_query``, ...) loads too: each
    head's rows are stacked into the batched matrices.

    Beyond the book (keyword-only, off by default): ``num_kv_heads`` < num_heads is grouped-query attention (each
    group of num_heads // num_kv_heads query heads shares one key/value head: smaller W_key, W_value and KV cache);
    ``qk_norm`` puts an RMSNorm on each head's queries and keys; ``bias=False`` drops out_proj's bias; and
    ``forward(..., rotate=...)`` turns queries and keys by their positions (rotary embeddings) before attending;
    ``forward(..., value_embed=...)`` adds a (B, T, H_kv * D) tensor to the values (value embeddings).
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
        fused: bool = False,
        *,
        num_kv_heads: int | None = None,
        qk_norm: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out={d_out} is not divisible by num_heads={num_heads}")
        self.d_out = d_out
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        self.head_dim = d_out // num_heads
        self.fused = fused
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out, bias=bias)  # combines the heads' outputs
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length), persistent=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-5) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-5) if qk_norm else nn.Identity()
        self.register_load_state_dict_pre_hook(self._stack_heads)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, heads, T, D)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int | torch.Tensor = 0,
                rotate=None, value_embed: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        queries = self.q_norm(self._split_heads(self.W_query(x)))  # (B, H, T, D)
        keys = self.k_norm(self._split_heads(self.W_key(x)))  # (B, H_kv, T, D)
        values = self.W_value(x)
        if value_embed is not None:
            values = values + value_embed.to(values.dtype)  # autocast's dtype: an fp32 sum would slow all after it
        values = self._split_heads(values)
        if rotate is not None:
            queries, keys = rotate(queries, keys, start)
        if isinstance(start, torch.Tensor):  # rows of different lengths, one new token each (a server's batch)
            context = self._attend_rows(queries, keys, values, kv, start)
        else:
            if kv is not None:
                keys, values = write_kv_cache(kv, start, keys, values)  # (B, H_kv, start + T, D)
            context = self._attend(queries, keys, values, start)
        context = context.transpose(1, 2).reshape(B, T, self.d_out)  # heads side by side again
        return self.out_proj(context)

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
        """Each of the T queries (positions start .. start + T - 1) attends to the keys up to its own position.
        With grouped-query attention, query head h attends with key/value head h // (H / H_kv)."""
        groups = self.num_heads // self.num_kv_heads  # query heads per key/value head
        if not self.fused:
            if groups > 1:
                keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
            attn_weights = causal_attention_weights(queries, keys, self.mask, self.dropout, start)
            return attn_weights @ values  # (B, H, T, D)
        # The same computation in one fused kernel. Its attn_mask is True where attending is allowed;
        # is_causal=True is the plain causal case without a mask tensor. enable_gqa: the grouping above.
        T = queries.shape[2]
        sdpa = dict(dropout_p=self.dropout.p if self.training else 0.0, enable_gqa=groups > 1)
        if start == 0:
            return F.scaled_dot_product_attention(queries, keys, values, is_causal=True, **sdpa)
        if T == 1:  # one new token (decoding) sees every stored position: nothing to mask
            return F.scaled_dot_product_attention(queries, keys, values, **sdpa)
        allowed = ~self.mask[start : start + T, : start + T]
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed, **sdpa)

    def _attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
        """One new token per row, row b at its own position ``lengths[b]`` (a server decoding requests of different
        lengths in one batch): store its key and value there, attend to that row's positions 0..lengths[b].
        For inference (no attention dropout). q: (B, H, 1, D); k, v: (B, H_kv, 1, D); kv: (2, B, H_kv, max_len, D)."""
        if q.shape[2] != 1:
            raise ValueError(f"per-row cache positions take one new token per row, got {q.shape[2]}")
        rows = torch.arange(q.shape[0], device=q.device)
        kv[0][rows, :, lengths] = k[:, :, 0]  # (B, H_kv, D) into each row's own position
        kv[1][rows, :, lengths] = v[:, :, 0]
        end = int(lengths.max()) + 1
        k, v = kv[0, :, :, :end], kv[1, :, :, :end]
        seen = torch.arange(end, device=q.device) <= lengths[:, None]  # (B, end): True where row b has a token
        groups = self.num_heads // self.num_kv_heads
        if not self.fused:
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            scores = (q @ k.transpose(2, 3)).masked_fill(~seen[:, None, None, :], float("-inf"))
            return torch.softmax(scores / self.head_dim**0.5, dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=seen[:, None, None, :], enable_gqa=groups > 1)

    @staticmethod
    def _stack_heads(module: MultiHeadAttention, state_dict: dict, prefix: str, *args) -> None:
        stack_heads(state_dict, prefix, module.num_heads)


# ---------------------------------------------------------------------------------------------------- GPTModel's


class CausalAttentionHeads(MultiHeadAttentionWrapper):
    """GPTModel's ``attn_impl=wrapper``: the book's wrapper of per-head ``CausalAttention`` modules, each D = d_out //
    num_heads wide, plus ``MultiHeadAttention``'s output projection, with the same signature and the same
    ``forward(x, kv, start)``. Slower than the batched layer, and the same function of the same weights.

    A state dict in ``MultiHeadAttention``'s batched layout loads too: its matrices are cut into the heads' rows.
    """

    def __init__(
        self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int, qkv_bias: bool = False
    ):
        if d_out % num_heads:
            raise ValueError(f"d_out={d_out} is not divisible by num_heads={num_heads}")
        super().__init__(d_in, d_out // num_heads, context_length, dropout, num_heads, qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.register_load_state_dict_pre_hook(self._cut_into_heads)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        # kv (2, B, H, max_len, D): head h keeps its keys and values in kv[:, :, h].
        heads = [head(x, None if kv is None else kv[:, :, h], start) for h, head in enumerate(self.heads)]
        return self.out_proj(torch.cat(heads, dim=-1))

    @staticmethod
    def _cut_into_heads(module: CausalAttentionHeads, state_dict: dict, prefix: str, *args) -> None:
        cut_into_heads(state_dict, prefix, len(module.heads))


def stack_heads(state_dict: dict, prefix: str, num_heads: int) -> None:
    """In place: the per-head ``{prefix}heads.<h>.W_query.weight`` etc. of a state dict become the batched
    ``{prefix}W_query.weight`` (the heads' rows stacked in order); a state dict without them is left as it is."""
    for name in QKV:
        for kind in ("weight", "bias"):
            per_head = [f"{prefix}heads.{h}.{name}.{kind}" for h in range(num_heads)]
            if all(key in state_dict for key in per_head):
                state_dict[f"{prefix}{name}.{kind}"] = torch.cat([state_dict.pop(key) for key in per_head])


def cut_into_heads(state_dict: dict, prefix: str, num_heads: int) -> None:
    """In place, the reverse of ``stack_heads``: batched matrices are cut into ``num_heads`` blocks of rows."""
    for name in QKV:
        for kind in ("weight", "bias"):
            if f"{prefix}{name}.{kind}" in state_dict:
                for h, rows in enumerate(state_dict.pop(f"{prefix}{name}.{kind}").chunk(num_heads)):
                    state_dict[f"{prefix}heads.{h}.{name}.{kind}"] = rows
