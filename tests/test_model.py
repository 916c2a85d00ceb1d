import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gpt.errors import UserError
from gpt.model import GELU, GPTConfig, GPTModel, LayerNorm

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def config(name: str, **overrides) -> GPTConfig:
    """A model config exactly as conf/model/<name>.yaml gives it."""
    values = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    values["vocab_size"] = values["vocab_size"] or 50257
    return GPTConfig(**{**values, **overrides})


def small(**overrides) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=101, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                               qkv_bias=False, tie_weights=False), **overrides})


@pytest.mark.parametrize(
    "name, tie, expected",
    [("gpt2-small", False, 163_009_536), ("gpt2-small", True, 124_412_160),
     ("gpt2-medium", False, 406_212_608), ("gpt2-medium", True, 354_749_440)],
)
def test_parameter_counts_match_the_book(name, tie, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPTModel(config(name, tie_weights=tie))
    assert model.num_parameters() == expected


def test_gpt2_small_size_in_fp32():
    with torch.device("meta"):
        model = GPTModel(config("gpt2-small"))
    assert round(model.num_parameters() * 4 / 2**20, 2) == 621.83


def test_tied_head_shares_the_parameter():
    model = GPTModel(small(tie_weights=True))
    assert model.out_head.weight is model.tok_emb.weight
    with torch.no_grad():
        model.tok_emb.weight[3, 0] = 42.0
    assert model.out_head.weight[3, 0] == 42.0


def test_logits_shape():
    model = GPTModel(small())
    assert model(torch.randint(0, 101, (3, 10))).shape == (3, 10, 101)


def test_changing_a_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = GPTModel(small()).eval()
    idx = torch.randint(0, 101, (2, 16))
    base = model(idx)
    for t in range(16):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 101
        out = model(changed)
        assert torch.equal(out[:, :t], base[:, :t])
        assert not torch.allclose(out[:, t], base[:, t])  # the changed position itself does see it


def test_untrained_loss_is_close_to_log_vocab():
    torch.manual_seed(0)
    model = GPTModel(config("tiny")).eval()
    idx = torch.randint(0, 50257, (4, 64))
    targets = torch.randint(0, 50257, (4, 64))
    loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_emb_dim_not_divisible_by_heads_is_a_config_error():
    with pytest.raises(ValueError, match="emb_dim=30 is not divisible by model.n_heads=4"):
        small(emb_dim=30)


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="longer than the context length 16"):
        GPTModel(small())(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = GPTModel(small(drop_rate=0.5))
    idx = torch.randint(0, 101, (2, 8))
    assert not torch.equal(model.train()(idx), model(idx))
    assert torch.equal(model.eval()(idx), model(idx))


@pytest.mark.parametrize("start", [0, 5])
def test_explicit_and_fused_attention_agree(start):
    torch.manual_seed(0)
    fused = GPTModel(small(attn_impl="sdpa")).eval()
    explicit = GPTModel(small(attn_impl="explicit")).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 101, (3, 16))
    assert torch.allclose(fused(idx), explicit(idx), atol=1e-5, rtol=0)
    # And through a KV cache, where the new queries start at position `start` (the masked, non-square case).
    caches = [m.new_cache(3, 16) for m in (fused, explicit)]
    for m, cache in zip((fused, explicit), caches):
        m(idx[:, :start], cache=cache) if start else None
    a, b = fused(idx[:, start:], cache=caches[0]), explicit(idx[:, start:], cache=caches[1])
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.allclose(a, fused(idx)[:, start:], atol=1e-5, rtol=0)


def test_explicit_and_fused_attention_have_the_same_gradients():
    torch.manual_seed(0)
    fused, explicit = GPTModel(small()), GPTModel(small(attn_impl="explicit"))
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 101, (2, 16))
    for m in (fused, explicit):
        m(idx).square().mean().backward()
    for (name, p), q in zip(fused.named_parameters(), explicit.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name


def test_cache_feeds_one_token_at_a_time_with_the_right_positions():
    torch.manual_seed(0)
    model = GPTModel(small()).eval()
    idx = torch.randint(0, 101, (2, 16))
    cache = model.new_cache(2, 16)
    steps = [model(idx[:, :6], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(6, 16)]
    assert cache.length == 16
    assert torch.allclose(torch.cat(steps, dim=1), model(idx), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="longer than the context length 16"):
        model(idx[:, :1], cache=cache)


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_cache_rows_of_different_lengths_step_together_each_at_its_own_position(attn_impl):
    torch.manual_seed(0)
    model = GPTModel(small(attn_impl=attn_impl)).eval()
    seqs = [torch.randint(0, 101, (n,)) for n in (3, 9, 1)]
    cache = model.new_cache(3, 16)
    cache.kv.normal_()  # whatever an earlier request left in the rows must not matter
    for b, s in enumerate(seqs):  # each sequence but its last token alone into its own row, as a server does
        if len(s) > 1:
            row = model.new_cache(1, 16)
            model(s[None, :-1], cache=row)
            cache.kv[:, :, b, :, : len(s) - 1] = row.kv[:, :, 0, :, : len(s) - 1]
    cache.length = torch.tensor([len(s) - 1 for s in seqs])
    last = torch.stack([s[-1:] for s in seqs])  # (3, 1): each row's next token, at its own position
    stepped = model(last, cache=cache)[:, -1]
    assert cache.length.tolist() == [len(s) for s in seqs]
    for b, s in enumerate(seqs):
        assert torch.allclose(stepped[b], model(s[None])[0, -1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one new token per row"):
        model(torch.zeros(3, 2, dtype=torch.long), cache=cache)


def test_attention_choice_is_checked_and_old_configs_default_to_sdpa():
    with pytest.raises(ValueError, match="model.attn_impl must be one of sdpa, explicit, wrapper"):
        small(attn_impl="flash")
    old = small().to_dict()
    del old["attn_impl"]  # a checkpoint written before the field existed
    assert GPTConfig(**old).attn_impl == "sdpa"
    for name in ("tiny", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert config(name).attn_impl == "sdpa"


def test_layer_norm_and_gelu_are_the_books_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 32) * 3 + 1
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.scale.uniform_(0.5, 1.5)
        norm.shift.uniform_(-1, 1)
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)  # the biased variance, as GPT-2 and the book use
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.scale + norm.shift
    assert torch.allclose(norm(x), expected, atol=1e-6, rtol=0)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(GELU()(x), expected, atol=1e-6, rtol=0)


def test_a_model_that_does_not_fit_in_memory_is_refused_before_anything_is_allocated(monkeypatch):
    import gpt.attention
    import gpt.model

    monkeypatch.setattr(gpt.model, "available_bytes", lambda device: 2**30 if device.type == "cpu" else None)
    masks = []
    real_mask = gpt.attention.causal_mask
    monkeypatch.setattr(gpt.attention, "causal_mask", lambda n: masks.append(real_mask(n)) or masks[-1])
    cfg = config("tiny", context_length=40000)  # a 40000 x 40000 mask per layer: 1.6 GB each
    with pytest.raises(UserError, match=r"model.context_length=40000 needs 6\.\d GiB for its weights and buffers and "
                                        r"cpu has 1\.0 GiB free; choose a smaller model or context length"):
        GPTModel(cfg)
    assert masks and all(m.device.type == "meta" for m in masks)  # measured on the meta device, nothing allocated
    with pytest.raises(UserError, match="model.emb_dim"):  # the shape's checks still come first
        GPTModel(config("tiny", emb_dim=0))


def test_free_memory_is_read_from_the_device():
    from gpt.model import available_bytes

    free = available_bytes(torch.device("cpu"))
    assert free is None or 0 < free < 2**50
    assert available_bytes(torch.device("meta")) is None  # nothing is allocated on meta: no limit
    if torch.cuda.is_available():
        assert 0 < available_bytes(torch.device("cuda")) <= torch.cuda.get_device_properties(0).total_memory
