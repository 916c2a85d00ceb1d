import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gpt.errors import UserError
from gpt.model import GPTConfig, GPTModel

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


def test_attention_choice_is_checked_and_old_configs_default_to_sdpa():
    with pytest.raises(ValueError, match="model.attn_impl must be one of sdpa, explicit"):
        small(attn_impl="flash")
    old = small().to_dict()
    del old["attn_impl"]  # a checkpoint written before the field existed
    assert GPTConfig(**old).attn_impl == "sdpa"
    for name in ("tiny", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert config(name).attn_impl == "sdpa"


@pytest.mark.parametrize("qkv_bias, tie_weights", [(False, True), (True, False)])
def test_the_parameter_count_is_known_before_the_model_is_built(qkv_bias, tie_weights):
    cfg = small(qkv_bias=qkv_bias, tie_weights=tie_weights)
    assert cfg.num_parameters() == GPTModel(cfg).num_parameters()
    mask_bytes = (cfg.n_layers + 1) * cfg.context_length**2
    assert cfg.build_bytes() == 4 * GPTModel(cfg).num_parameters() + mask_bytes


def test_a_model_that_does_not_fit_in_memory_is_refused_before_anything_is_allocated(monkeypatch):
    import gpt.model

    monkeypatch.setattr(gpt.model, "available_bytes", lambda device: 8 * 2**30)  # 8 GiB free, whatever the host
    monkeypatch.setattr(torch, "triu", lambda *a, **k: pytest.fail("a causal mask was allocated"))
    monkeypatch.setattr(torch.nn.Embedding, "__init__", lambda *a, **k: pytest.fail("an embedding was allocated"))
    cfg = config("tiny", context_length=100000)
    need = f"{cfg.build_bytes() / 2**30:.1f}"
    assert float(need) > cfg.n_layers * 100000**2 / 2**30  # at least the masks, one per layer
    with pytest.raises(UserError, match=rf"model.context_length=100000 needs {need} GiB to build .* and cpu has 8\.0 "
                                        "GiB free; choose a smaller model or context length"):
        GPTModel(cfg)
    with pytest.raises(UserError, match="model.emb_dim"):  # the shape's checks still come first
        GPTModel(config("tiny", emb_dim=0))


def test_free_memory_is_read_from_the_device():
    from gpt.model import available_bytes

    free = available_bytes(torch.device("cpu"))
    assert free is None or 0 < free < 2**50
    assert available_bytes(torch.device("meta")) is None  # nothing is allocated on meta: no limit
    if torch.cuda.is_available():
        assert 0 < available_bytes(torch.device("cuda")) <= torch.cuda.get_device_properties(0).total_memory
