"""The modern model parts (rotary positions, RMSNorm, SwiGLU, grouped-query attention, QK-norm, bias-free linears,
GPT-2's scaled init, value embeddings), each against a computation of its own, and all of them together through the KV cache,
checkpoints and the entry points."""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt.checkpoint import atomic_save
from gpt.generation import generate
from gpt.model import FeedForward, GPTConfig, GPTModel, RotaryPositions, SwiGLU
from gpt.pretrained import export_hf
from gpt.tasks import load_trained
from gpt.tokenizer import build_tokenizer

MODERN = dict(norm="rmsnorm", ffn="swiglu", pos="rope", n_kv_heads=2, qk_norm=True, bias=False, scaled_init=True,
              value_embeds=True)


def small(**overrides) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=97, context_length=12, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                               qkv_bias=False, tie_weights=False), **overrides})


def perturbed(model: GPTModel) -> GPTModel:
    """Every parameter moved off its initial value (norm weights of 1, zero biases), so that each one matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- RoPE


def test_rope_is_a_complex_rotation_by_position_times_frequency():
    torch.manual_seed(0)
    rope = RotaryPositions(small(pos="rope"))  # head size 8: frequencies 10000^(-0/8, -2/8, -4/8, -6/8)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    rq, rk = rope.rotate(q, k, start=3)
    # Reference: feature pair (i, i + 4) is the complex number x_i + j x_{i+4}, turned by e^{j p theta_i}.
    theta = 10_000.0 ** (-torch.arange(4) / 4)
    turn = torch.polar(torch.ones(5, 4), torch.arange(3, 8)[:, None] * theta)  # positions 3..7
    for x, rx in ((q, rq), (k, rk)):
        z = torch.complex(x[..., :4], x[..., 4:]) * turn
        assert torch.allclose(rx, torch.cat((z.real, z.imag), dim=-1), atol=1e-5)
        assert torch.allclose(rx.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths


def test_rope_dot_products_depend_only_on_the_relative_position():
    torch.manual_seed(0)
    rope = RotaryPositions(small(pos="rope"))
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> float:  # q at position m, k at position n
        return (rope.rotate(q, q, m)[0] * rope.rotate(k, k, n)[1]).sum().item()

    assert score(5, 2) == pytest.approx(score(9, 6), abs=1e-5) == pytest.approx(score(3, 0), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_rope_has_no_position_table_and_an_odd_head_size_is_refused():
    model = GPTModel(small(pos="rope"))
    assert not any("pos_emb" in name for name in model.state_dict())
    assert model.num_parameters() == GPTModel(small()).num_parameters() - 12 * 32
    with pytest.raises(ValueError, match="head size emb_dim // n_heads = 5 is odd"):
        small(pos="rope", emb_dim=20)


# ---------------------------------------------------------------------------------------------------- norms, FFN


def test_rmsnorm_is_its_formula_and_is_used_for_every_norm():
    torch.manual_seed(0)
    model = perturbed(GPTModel(small(norm="rmsnorm")))
    norm = model.final_norm
    x = torch.randn(3, 5, 32) * 3 + 1
    expected = x / torch.sqrt(x.square().mean(dim=-1, keepdim=True) + 1e-5) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-5)
    assert all(name.endswith("weight") for name, _ in model.named_parameters() if "norm" in name)  # no shift


def test_swiglu_is_its_formula_with_about_the_gelu_mlps_parameters():
    torch.manual_seed(0)
    ff = perturbed(GPTModel(small(ffn="swiglu"))).trf_blocks[0].ff
    x = torch.randn(2, 5, 32)
    gate = x @ ff.gate.weight.T + ff.gate.bias
    up = x @ ff.up.weight.T + ff.up.bias
    expected = (gate * torch.sigmoid(gate) * up) @ ff.out_proj.weight.T + ff.out_proj.bias
    assert torch.allclose(ff(x), expected, atol=1e-5)
    for emb_dim in (128, 768):
        n_gelu, n_swiglu = (sum(p.numel() for p in part(small(emb_dim=emb_dim)).parameters())
                            for part in (FeedForward, SwiGLU))
        assert abs(n_swiglu / n_gelu - 1) < 0.1, emb_dim


# ---------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_grouped_query_attention_is_mha_with_each_kv_head_repeated_for_its_group(attn_impl):
    """n_kv_heads=2 of 4: the same as full multi-head attention whose heads 0,1 share key/value head 0 and 2,3
    head 1, i.e. with W_key/W_value's per-head row blocks repeated; also through the KV cache."""
    torch.manual_seed(0)
    gqa = perturbed(GPTModel(small(attn_impl=attn_impl, n_kv_heads=2)))
    mha = GPTModel(small(attn_impl=attn_impl)).eval()
    state = gqa.state_dict()
    for name, tensor in list(state.items()):
        if name.endswith(("W_key.weight", "W_value.weight")):
            assert tensor.shape == (2 * 8, 32)  # 2 key/value heads of 8
            state[name] = tensor.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(state)
    idx = torch.randint(0, 97, (3, 12))
    assert torch.allclose(gqa(idx), mha(idx), atol=1e-5)
    cache = gqa.new_cache(3, 12)
    steps = [gqa(idx[:, :7], cache=cache)] + [gqa(idx[:, t : t + 1], cache=cache) for t in range(7, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), mha(idx), atol=1e-5)


def test_gqa_with_as_many_kv_heads_as_heads_is_plain_mha():
    torch.manual_seed(0)
    a = GPTModel(small(n_kv_heads=4)).eval()
    torch.manual_seed(0)
    b = GPTModel(small()).eval()
    idx = torch.randint(0, 97, (2, 12))
    assert torch.equal(a(idx), b(idx))


def test_the_kv_cache_shrinks_by_n_heads_over_n_kv_heads():
    full, grouped = (GPTModel(small(n_kv_heads=n)).new_cache(2, 12) for n in (4, 1))
    assert full.kv.numel() == 4 * grouped.kv.numel()
    assert grouped.kv.shape[3] == 1
    with pytest.raises(ValueError, match="model.n_kv_heads=3 must be a positive divisor of model.n_heads=4"):
        small(n_kv_heads=3)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    model = perturbed(GPTModel(small(qk_norm=True, attn_impl="explicit")))
    idx = torch.randint(0, 97, (2, 12))
    before = model(idx)
    with torch.no_grad():
        for block in model.trf_blocks:
            block.att.W_query.weight.mul_(10)
            block.att.W_key.weight.mul_(5)
    assert torch.allclose(model(idx), before, atol=1e-4)
    assert model.trf_blocks[0].att.q_norm.weight.shape == (8,)  # one norm per head size


def test_bias_false_drops_every_bias_but_qkv_bias():
    model = GPTModel(small(bias=False, qkv_bias=True))
    biases = {name.split(".")[-2] for name, _ in model.named_parameters() if name.endswith("bias")}
    assert biases == {"W_query", "W_key", "W_value"}
    assert "trf_blocks.0.norm1.shift" in dict(model.named_parameters())  # LayerNorm's shift is a norm part, not a linear's bias


def test_scaled_init_shrinks_only_the_residual_projections():
    torch.manual_seed(0)
    model = GPTModel(small(emb_dim=256, n_layers=8, scaled_init=True))
    for block in model.trf_blocks:
        assert block.att.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
        assert block.ff.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
        assert block.att.W_query.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert block.ff.layers[0].weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_value_embeds_add_each_layers_own_token_rows_to_its_attention_values():
    torch.manual_seed(0)
    model = perturbed(GPTModel(small(value_embeds=True, n_kv_heads=2)))
    tables = model.value_embeds.tables
    assert len(tables) == 2 and all(t.weight.shape == (97, 2 * 8) for t in tables)  # a value row of 2 kv heads
    assert 0.9 < GPTModel(small(value_embeds=True)).value_embeds.tables[0].weight.std() < 1.1  # N(0, 1) at init
    plain = GPTModel(small(n_kv_heads=2)).eval()
    _, extra = plain.load_state_dict(model.state_dict(), strict=False)
    assert sorted(extra) == ["value_embeds.tables.0.weight", "value_embeds.tables.1.weight"]
    idx = torch.randint(0, 97, (3, 12))
    assert not torch.allclose(plain(idx), model(idx), atol=1e-3)  # the tables matter
    for block, table in zip(plain.trf_blocks, tables):  # the same model: W_value(x) + the layer's rows of the tokens
        block.att.W_value.register_forward_hook(lambda module, args, out, table=table: out + table(idx))
    assert torch.allclose(plain(idx), model(idx), atol=1e-5)


def test_wrapper_attention_refuses_the_modern_attention_parts():
    with pytest.raises(ValueError, match="model.attn_impl=wrapper is the book's per-head stage"):
        small(attn_impl="wrapper", pos="rope")
    with pytest.raises(ValueError, match="value_embeds need attn_impl=sdpa or explicit"):
        small(attn_impl="wrapper", value_embeds=True)


def test_old_configs_get_the_books_parts():
    old = small().to_dict()
    for key in MODERN:
        del old[key]  # a checkpoint written before these fields existed
    assert GPTConfig(**old) == small()
    assert small().kv_heads == 4 and not small().qk_norm and small().bias and not small().scaled_init
    assert not small().value_embeds and GPTModel(small()).value_embeds is None


# ---------------------------------------------------------------------------------------------------- all together


@pytest.mark.parametrize("attn_impl, tie_weights", [("sdpa", True), ("explicit", False)])
def test_every_part_on_cached_and_uncached_generation_agree(attn_impl, tie_weights):
    torch.manual_seed(0)
    model = perturbed(GPTModel(small(attn_impl=attn_impl, tie_weights=tie_weights, **MODERN)))
    assert (model.out_head.weight is model.tok_emb.weight) == tie_weights
    prompt = torch.randint(0, 97, (3, 5))
    cached = generate(model, prompt, 16, context_length=12)  # past the context: the window is re-run
    uncached = torch.cat([prompt, torch.zeros(3, 16, dtype=torch.long)], dim=1)
    for t in range(5, 21):  # the plain loop: the whole window, no cache
        uncached[:, t] = model(uncached[:, max(0, t - 12) : t])[:, -1].argmax(-1)
    assert torch.equal(cached, uncached)


def test_every_part_on_survives_a_checkpoint_round_trip_and_gpt2_export_refuses_it(tmp_path):
    torch.manual_seed(0)
    tok = build_tokenizer("simple_v2", "In the beginning God created the heaven and the earth .")
    model = perturbed(GPTModel(small(vocab_size=tok.n_vocab, **MODERN)))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hparams = {"model": model.cfg.to_dict(), "tokenizer": tok.to_config()}
    atomic_save({"hyper_parameters": hparams, "state_dict": state}, tmp_path / "modern.ckpt")
    loaded, _, _ = load_trained(tmp_path / "modern.ckpt")
    idx = torch.randint(0, tok.n_vocab, (2, 12))
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded(idx), model(idx))
    with pytest.raises(ValueError, match=r"this model has model.norm=rmsnorm, model.ffn=swiglu, model.pos=rope, "
                                         r"model.qk_norm=True, model.bias=False, model.value_embeds=True, "
                                         r"model.n_kv_heads=2; only"):
        export_hf(model, tok.to_config(), None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_modern_tiny_with_value_embeds_trains_generates_and_evaluates_through_the_entry_points(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_entrypoints import TINY, run

    from gpt.data.sources.kjv import kjv_text

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(kjv_text()[:60_000], encoding="utf-8")
    data = ["data=text_file", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    shape = [o for o in TINY if not o.startswith(("model.n_heads", "model.emb_dim"))] + ["model.emb_dim=64",
                                                                                        "model.n_heads=4"]
    run("train.py", "model=modern-tiny", "model.value_embeds=true", *shape, *data, "trainer.max_steps=30",
        f"hydra.run.dir={tmp_path / 'run'}")
    val = [e.value for e in EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload().Scalars("val/loss")]
    assert val[-1] < val[0] - 0.3
    out = run("generate.py", f"ckpt={tmp_path / 'run'}", "prompt=And God said", "max_new_tokens=6",
              "temperature=0").stdout
    assert out.startswith("And God said") and len(out.strip()) > len("And God said")
    out = run("evaluate.py", f"ckpt={tmp_path / 'run'}", f"data.path={corpus}").stdout
    assert float(out.split("loss: ")[1].split()[0]) < val[0]  # the trained model, evaluated on the text it read
