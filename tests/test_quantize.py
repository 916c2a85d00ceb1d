"""Decoding in fp32, bf16 and int8: valid tokens, fewer weight bytes, and a perplexity close to fp32's on a model
that has learnt something."""

import copy
import math

import pytest
import torch

from gpt import quantize
from gpt.evaluation import mean_next_token_loss
from gpt.generation import generate
from gpt.model import GPTConfig, GPTModel
from gpt.quantize import check_dtype, for_decoding, weight_bytes

VOCAB = 64


def markov_ids(n: int, seed: int) -> torch.Tensor:
    """A token stream where each token has two likely successors: something a model can learn in seconds."""
    g = torch.Generator().manual_seed(0)  # the same chain for every seed
    successors = torch.randint(0, VOCAB, (VOCAB, 2), generator=g)
    g.manual_seed(seed)
    ids, t = [], 0
    for coin in torch.rand(n, generator=g).tolist():
        t = int(successors[t, 0 if coin < 0.7 else 1]) if coin < 0.95 else int(torch.randint(0, VOCAB, (1,), generator=g))
        ids.append(t)
    return torch.tensor(ids)


@pytest.fixture(scope="module")
def trained():
    """A small GPT trained for 150 steps on the chain (its loss falls from ln 64 = 4.16 to about 1)."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, context_length=32, emb_dim=128, n_heads=4, n_layers=2, drop_rate=0.0,
                    qkv_bias=True, tie_weights=False)
    model = GPTModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = markov_ids(16 * 33 * 150, seed=1).view(150, 16, 33)
    for batch in data:
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def held_out_loss(model) -> float:
    return mean_next_token_loss(model, markov_ids(4000, seed=2), 32, 16)[0]


@pytest.fixture
def native_bf16_cpu(monkeypatch):
    monkeypatch.setattr(quantize, "cpu_info", lambda: ("Fake CPU", {"avx512_bf16"}))


def test_bad_dtypes_are_refused_with_what_to_do_instead():
    with pytest.raises(ValueError, match="dtype must be one of fp32, bf16, int8"):
        check_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="no native bf16.*use dtype=fp32"):
        check_dtype("bf16", "cpu", flags={"avx2"})
    check_dtype("bf16", "cpu", flags={"amx_bf16"})
    with pytest.raises(ValueError, match="CPU only"):
        check_dtype("int8", "cuda")


@pytest.mark.parametrize("dtype,at_most", [("int8", 0.3), ("bf16", 0.5)])
def test_low_precision_decoding_gives_valid_tokens_from_fewer_bytes(trained, native_bf16_cpu, dtype, at_most):
    model = for_decoding(copy.deepcopy(trained), dtype)
    assert weight_bytes(model) <= at_most * weight_bytes(trained)
    prompt = markov_ids(6, seed=3).view(2, 3)
    out = generate(model, prompt, 20, 32)
    assert out.shape == (2, 23) and torch.equal(out[:, :3], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB
    reference = generate(trained, prompt, 20, 32)
    assert (out == reference).float().mean() > 0.8  # a few late tokens may part ways, not most


@pytest.mark.parametrize("dtype,tolerance", [("int8", 0.02), ("bf16", 0.01)])
def test_low_precision_perplexity_stays_close_to_fp32(trained, native_bf16_cpu, dtype, tolerance):
    fp32 = held_out_loss(trained)
    assert fp32 < 0.5 * math.log(VOCAB)  # the model did learn the chain
    low = held_out_loss(for_decoding(copy.deepcopy(trained), dtype))
    assert math.exp(low) <= (1 + tolerance) * math.exp(fp32)


def test_weight_bytes_counts_a_tied_head_once():
    cfg = GPTConfig(vocab_size=VOCAB, context_length=8, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0,
                    qkv_bias=False, tie_weights=True)
    model = GPTModel(cfg)
    assert weight_bytes(model) == 4 * sum(p.numel() for p in model.parameters())  # parameters() yields it once


needs_onednn_bf16 = pytest.mark.skipif(not quantize.packs_bf16("cpu"), reason="oneDNN runs no bf16 on this CPU")


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_bf16_linear_computes_what_the_bf16_linear_does(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200, bias=bias).to(torch.bfloat16)
    packed = quantize.PackedLinear(linear)
    for shape in [(1, 96), (3, 1, 96), (2, 17, 96)]:  # a decoding step, a batch of steps, a prompt
        x = torch.randn(shape, dtype=torch.bfloat16)
        torch.testing.assert_close(packed(x), linear(x), rtol=1e-2, atol=1e-2)
        assert packed(x).dtype == torch.bfloat16


@needs_onednn_bf16
def test_bf16_decoding_on_a_cpu_packs_every_linear_layer_and_counts_its_bytes(trained, native_bf16_cpu):
    linears = sum(isinstance(m, torch.nn.Linear) for m in trained.modules())
    model = for_decoding(copy.deepcopy(trained), "bf16")
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, quantize.PackedLinear) for m in model.modules()) == linears
    assert weight_bytes(model) == 2 * sum(p.numel() for p in trained.parameters())
