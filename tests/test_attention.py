import pytest
import torch

from gpt.attention import (
    CausalAttention,
    CausalAttentionHeads,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttention_v1,
    SelfAttention_v2,
    causal_attention_weights,
    simplified_self_attention,
)
from gpt.model import GPTConfig, GPTModel
from gpt.pretrained import ours_to_hf

# The book's six-token example, "Your journey starts with one step", as 3-dimensional embeddings (section 3.3).
INPUTS = torch.tensor(
    [[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64], [0.22, 0.58, 0.33], [0.77, 0.25, 0.10],
     [0.05, 0.80, 0.55]]
)
BATCH = torch.stack((INPUTS, INPUTS))  # (2, 6, 3)
D_IN, D_OUT, CONTEXT = 3, 2, 6


def test_every_class_takes_the_books_example_shapes():
    weights, context = simplified_self_attention(INPUTS)
    assert weights.shape == (6, 6) and context.shape == (6, 3)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(6))
    assert SelfAttention_v1(D_IN, D_OUT)(INPUTS).shape == (6, 2)
    assert SelfAttention_v2(D_IN, D_OUT)(INPUTS).shape == (6, 2)
    assert CausalAttention(D_IN, D_OUT, CONTEXT, 0.0)(BATCH).shape == (2, 6, 2)
    assert MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT, 0.0, num_heads=2)(BATCH).shape == (2, 6, 4)
    assert MultiHeadAttention(D_IN, D_OUT, CONTEXT, 0.0, num_heads=2)(BATCH).shape == (2, 6, 2)


def test_the_books_seeds_give_the_books_printed_outputs():
    """Row 0 of each output as printed in chapter 3 (4 decimals): parameters are created in the book's order."""
    printed = {
        (SelfAttention_v1, 123, (D_IN, D_OUT), INPUTS): [0.2996, 0.8053],
        (SelfAttention_v2, 789, (D_IN, D_OUT), INPUTS): [-0.0739, 0.0713],
        (CausalAttention, 123, (D_IN, D_OUT, CONTEXT, 0.0), BATCH): [-0.4519, 0.2216],
        (MultiHeadAttentionWrapper, 123, (D_IN, D_OUT, CONTEXT, 0.0, 2), BATCH): [-0.4519, 0.2216, 0.4772, 0.1063],
        (MultiHeadAttention, 123, (D_IN, D_OUT, CONTEXT, 0.0, 2), BATCH): [0.3190, 0.4858],
    }
    for (cls, seed, args, x), row in printed.items():
        torch.manual_seed(seed)
        out = cls(*args)(x)
        first = out[0] if out.dim() == 2 else out[0, 0]
        assert torch.allclose(first, torch.tensor(row), atol=5e-5), cls.__name__


def test_v1_with_v2s_weights_transposed_gives_v2s_output():
    v2 = SelfAttention_v2(D_IN, D_OUT)
    v1 = SelfAttention_v1(D_IN, D_OUT)
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(v1, name).copy_(getattr(v2, name).weight.T)
    assert torch.allclose(v1(INPUTS), v2(INPUTS), atol=1e-6)


def causal_weights(ca: CausalAttention, x: torch.Tensor) -> torch.Tensor:
    return causal_attention_weights(ca.W_query(x), ca.W_key(x), ca.mask, ca.dropout)


def test_causal_weights_are_zero_above_the_diagonal_and_rows_sum_to_one():
    ca = CausalAttention(D_IN, D_OUT, CONTEXT, 0.0)
    w = causal_weights(ca, BATCH)
    assert torch.equal(w.triu(diagonal=1), torch.zeros_like(w))
    assert (w.tril() > 0).sum() == 2 * 21  # every allowed position gets some weight
    assert torch.allclose(w.sum(dim=-1), torch.ones(2, 6))


def test_dropout_zeroes_about_half_the_weights_and_doubles_the_rest():
    torch.manual_seed(0)
    ca = CausalAttention(D_IN, D_OUT, 64, 0.5)
    x = torch.rand(8, 64, D_IN)
    with torch.no_grad():
        full = causal_weights(ca.eval(), x)
        dropped = causal_weights(ca.train(), x)
    allowed = full > 0
    kept = dropped[allowed] != 0
    assert 0.45 < kept.float().mean() < 0.55
    assert torch.allclose(dropped[allowed][kept], 2 * full[allowed][kept])


def test_wrapper_with_one_head_is_causal_attention():
    torch.manual_seed(1)
    ca = CausalAttention(D_IN, D_OUT, CONTEXT, 0.0)
    wrapper = MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT, 0.0, num_heads=1)
    wrapper.heads[0].load_state_dict(ca.state_dict())
    assert torch.equal(wrapper(BATCH), ca(BATCH))


def test_wrapper_heads_stacked_into_the_batched_matrices_give_the_same_output():
    torch.manual_seed(2)
    wrapper = MultiHeadAttentionWrapper(D_IN, D_OUT, CONTEXT, 0.0, num_heads=3, qkv_bias=True)
    mha = MultiHeadAttention(D_IN, 3 * D_OUT, CONTEXT, 0.0, num_heads=3, qkv_bias=True)
    state = {**wrapper.state_dict(), "out_proj.weight": torch.eye(3 * D_OUT), "out_proj.bias": torch.zeros(3 * D_OUT)}
    mha.load_state_dict(state)  # the per-head layout loads: each head's rows stacked in order
    assert torch.allclose(mha(BATCH), wrapper(BATCH), atol=1e-6, rtol=0)


def small(attn_impl: str) -> GPTConfig:
    return GPTConfig(vocab_size=101, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                     qkv_bias=True, tie_weights=True, attn_impl=attn_impl)


def test_state_dict_keys_per_implementation():
    keys = {impl: set(GPTModel(small(impl)).state_dict()) for impl in ("sdpa", "explicit", "wrapper")}
    batched = {f"trf_blocks.0.att.{n}.{k}" for n in ("W_query", "W_key", "W_value", "out_proj") for k in ("weight", "bias")}
    assert batched <= keys["sdpa"] and keys["sdpa"] == keys["explicit"]  # the layout checkpoints and GPT-2 use
    assert "trf_blocks.0.att.heads.3.W_value.bias" in keys["wrapper"]
    assert "trf_blocks.0.att.W_value.bias" not in keys["wrapper"] and "trf_blocks.0.att.out_proj.bias" in keys["wrapper"]


@pytest.mark.parametrize("source", ["sdpa", "wrapper"])
def test_every_implementation_gives_the_same_logits_from_any_checkpoint_layout(source):
    torch.manual_seed(3)
    trained = GPTModel(small(source)).eval()
    models = {impl: GPTModel(small(impl)).eval() for impl in ("sdpa", "explicit", "wrapper")}
    for model in models.values():
        model.load_state_dict(trained.state_dict())
    idx = torch.randint(0, 101, (2, 16))
    reference = trained(idx)
    for impl, model in models.items():
        assert torch.allclose(model(idx), reference, atol=1e-5, rtol=0), impl
        # Through the KV cache: a 5-token prompt, then 3 tokens at once, then one at a time.
        cache = model.new_cache(2, 16)
        steps = [model(idx[:, :5], cache=cache), model(idx[:, 5:8], cache=cache)]
        steps += [model(idx[:, t : t + 1], cache=cache) for t in range(8, 16)]
        assert torch.allclose(torch.cat(steps, dim=1), reference, atol=1e-5, rtol=0), impl
    # And back: the converted weights saved again load into the layout they came from unchanged.
    back = GPTModel(small(source))
    back.load_state_dict(models["wrapper" if source == "sdpa" else "sdpa"].state_dict())
    for name, tensor in trained.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_wrapper_trains_with_the_same_gradients():
    torch.manual_seed(4)
    fused, wrapper = GPTModel(small("sdpa")), GPTModel(small("wrapper"))
    wrapper.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 101, (2, 16))
    for model in (fused, wrapper):
        model(idx).square().mean().backward()
    head = wrapper.trf_blocks[1].att.heads[2].W_key.weight.grad  # head 2's rows of the batched matrix: 16..23
    assert torch.allclose(head, fused.trf_blocks[1].att.W_key.weight.grad[16:24], atol=1e-6, rtol=1e-4)


def test_a_wrapper_model_exports_gpt2s_layout():
    torch.manual_seed(5)
    fused, wrapper = GPTModel(small("sdpa")), GPTModel(small("wrapper"))
    wrapper.load_state_dict(fused.state_dict())
    a, b = ours_to_hf(fused), ours_to_hf(wrapper)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_attention_and_indivisible_heads_are_refused():
    with pytest.raises(ValueError, match="model.attn_impl must be one of sdpa, explicit, wrapper"):
        small("flash")
    for cls in (MultiHeadAttention, CausalAttentionHeads):
        with pytest.raises(ValueError, match="d_out=5 is not divisible by num_heads=2"):
            cls(3, 5, 6, 0.0, num_heads=2)
    assert isinstance(GPTModel(small("wrapper")).trf_blocks[0].att.heads[0], CausalAttention)
