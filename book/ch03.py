"""Chapter 3, coding attention mechanisms: from weight-free self-attention to the batched multi-head layer.

python -m book.ch03
"""

from __future__ import annotations

import torch

from book import section
from gpt.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention_v1,
    SelfAttention_v2,
    causal_attention_weights,
    simplified_self_attention,
)

INPUTS = torch.tensor(
    [[0.43, 0.15, 0.89],  # Your     (x^1)
     [0.55, 0.87, 0.66],  # journey  (x^2)
     [0.57, 0.85, 0.64],  # starts   (x^3)
     [0.22, 0.58, 0.33],  # with     (x^4)
     [0.77, 0.25, 0.10],  # one      (x^5)
     [0.05, 0.80, 0.55]]  # step     (x^6)
)


def print_context_vecs(seed: int, cls: type[torch.nn.Module], *args, batch: torch.Tensor, **kwargs) -> None:
    """Build ``cls(*args, **kwargs)`` right after ``torch.manual_seed(seed)``, as the book does, and print its output."""
    torch.manual_seed(seed)
    context_vecs = cls(*args, **kwargs)(batch)
    print(context_vecs)
    print("context_vecs.shape:", context_vecs.shape)


def main() -> None:
    torch.set_printoptions(precision=4, sci_mode=False)
    inputs = INPUTS

    section("3.3.1 A simple self-attention mechanism without trainable weights")
    query = inputs[1]  # the second token, "journey"
    attn_scores_2 = torch.stack([torch.dot(x_i, query) for x_i in inputs])
    print(attn_scores_2)
    attn_weights_2_tmp = attn_scores_2 / attn_scores_2.sum()
    print("Attention weights:", attn_weights_2_tmp)
    print("Sum:", attn_weights_2_tmp.sum())
    attn_weights_2 = torch.softmax(attn_scores_2, dim=0)
    print("Attention weights:", attn_weights_2)
    print("Sum:", attn_weights_2.sum())
    print(attn_weights_2 @ inputs)  # the context vector of "journey"

    section("3.3.2 Computing attention weights for all input tokens")
    print(inputs @ inputs.T)  # every token's scores
    attn_weights, all_context_vecs = simplified_self_attention(inputs)
    print(attn_weights)
    print("All row sums:", attn_weights.sum(dim=-1))
    print(all_context_vecs)

    section("3.4.1 Computing the attention weights step by step")
    x_2, d_in, d_out = inputs[1], inputs.shape[1], 2
    torch.manual_seed(123)
    sa_v1 = SelfAttention_v1(d_in, d_out)  # the book's three torch.rand(d_in, d_out) matrices, in this order
    W_query, W_key, W_value = sa_v1.W_query.detach(), sa_v1.W_key.detach(), sa_v1.W_value.detach()
    query_2 = x_2 @ W_query
    print(query_2)
    keys, values = inputs @ W_key, inputs @ W_value
    print("keys.shape:", keys.shape)
    print("values.shape:", values.shape)
    print(query_2.dot(keys[1]))
    attn_scores_2 = query_2 @ keys.T
    print(attn_scores_2)
    attn_weights_2 = torch.softmax(attn_scores_2 / keys.shape[-1] ** 0.5, dim=-1)
    print(attn_weights_2)
    print(attn_weights_2 @ values)

    section("3.4.2 Implementing a compact self-attention Python class")
    print(sa_v1(inputs))
    torch.manual_seed(789)
    sa_v2 = SelfAttention_v2(d_in, d_out)
    print(sa_v2(inputs))

    section("3.5.1 Applying a causal attention mask")
    queries, keys = sa_v2.W_query(inputs), sa_v2.W_key(inputs)
    attn_weights = torch.softmax(queries @ keys.T / keys.shape[-1] ** 0.5, dim=-1)
    print(attn_weights)
    context_length = attn_scores_2.shape[0]
    mask_simple = torch.tril(torch.ones(context_length, context_length))
    print(mask_simple)
    masked_simple = attn_weights * mask_simple
    print(masked_simple)
    print(masked_simple / masked_simple.sum(dim=-1, keepdim=True))
    mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)
    masked = (queries @ keys.T).masked_fill(mask.bool(), -torch.inf)
    print(masked)
    attn_weights = causal_attention_weights(queries, keys, mask.bool(), torch.nn.Identity())
    print(attn_weights)

    section("3.5.2 Masking additional attention weights with dropout")
    torch.manual_seed(123)
    dropout = torch.nn.Dropout(0.5)
    print(dropout(torch.ones(6, 6)))
    torch.manual_seed(123)
    print(dropout(attn_weights))

    section("3.5.3 Implementing a compact causal attention class")
    batch = torch.stack((inputs, inputs), dim=0)
    print(batch.shape)
    context_length = batch.shape[1]
    print_context_vecs(123, CausalAttention, d_in, d_out, context_length, 0.0, batch=batch)

    section("3.6.1 Stacking multiple single-head attention layers")
    print_context_vecs(123, MultiHeadAttentionWrapper, d_in, d_out, context_length, 0.0, num_heads=2, batch=batch)

    section("3.6.2 Implementing multi-head attention with weight splits")
    print_context_vecs(123, MultiHeadAttention, d_in, d_out, context_length, 0.0, num_heads=2, batch=batch)
    print("GPT-2 small's layer: d_in = d_out = 768, 12 heads, context 1024:",
          sum(p.numel() for p in MultiHeadAttention(768, 768, 1024, 0.0, num_heads=12).parameters()), "parameters")


if __name__ == "__main__":
    main()
