import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.generation import (
    check_sampling,
    generate,
    generate_text_simple,
    generate_tokens,
    sample_next,
    text_to_token_ids,
    token_ids_to_text,
)


class Counter(nn.Module):
    """A stand-in model whose most likely next token is (last token + 1) % vocab; it refuses over-long inputs."""

    def __init__(self, vocab: int = 10, context_length: int = 4):
        super().__init__()
        self.vocab, self.context_length = vocab, context_length

    def forward(self, idx):
        assert idx.shape[1] <= self.context_length
        logits = torch.zeros(*idx.shape, self.vocab)
        nxt = (idx + 1) % self.vocab
        logits.scatter_(-1, nxt[..., None], 5.0)
        return logits


def test_greedy_follows_the_argmax_and_crops_to_the_context():
    out = generate(Counter(), torch.tensor([[0, 1, 2, 3, 4, 5]]), max_new_tokens=6, context_length=4)
    assert out.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]]


def test_generation_stops_at_eos_and_pads_finished_rows():
    out = generate(Counter(), torch.tensor([[1], [5]]), max_new_tokens=8, context_length=4, eos_id=7)
    # Row 0 reaches 7 after six tokens, row 1 after two; row 1 then keeps yielding eos until row 0 is done.
    assert out.tolist() == [[1, 2, 3, 4, 5, 6, 7], [5, 6, 7, 7, 7, 7, 7]]


def test_zero_new_tokens_returns_the_prompt_and_negative_is_refused():
    idx = torch.tensor([[1, 2]])
    assert torch.equal(generate(Counter(), idx, 0, 4), idx)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        list(generate_tokens(Counter(), idx, -1, 4))


def test_top_k_one_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=1.0, top_k=1), greedy)
    assert torch.equal(sample_next(logits, temperature=1.0, top_p=1e-6), greedy)


def test_top_k_samples_only_from_the_k_most_likely():
    logits = torch.arange(20.0).repeat(2000, 1)  # token 19 is the most likely
    draws = sample_next(logits, temperature=5.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {17, 18, 19}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(3000, 1)
    draws = sample_next(probs.log(), temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(1, 100)
    a = [sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7)).item() for _ in range(3)]
    b = [sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7)).item() for _ in range(3)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(temperature=-0.1), "temperature must be >= 0"), (dict(top_k=0), "top_k must be in 1..100"),
     (dict(top_k=101), "top_k must be in 1..100"), (dict(top_p=0.0), "top_p must be in"),
     (dict(top_p=1.5), "top_p must be in")],
)
def test_bad_sampling_settings_are_refused(kwargs, message):
    settings = dict(temperature=1.0, top_k=None, top_p=None) | kwargs
    with pytest.raises(ValueError, match=message):
        check_sampling(**settings, vocab_size=100)


class NoCache(nn.Module):
    """The same model seen through a wrapper without ``new_cache``: generation re-runs the whole window."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        return self.model(idx)


def tiny_model(seed: int, attn_impl: str, qkv_bias: bool) -> nn.Module:
    """A random GPTModel in eval mode: vocabulary 97, context 12."""
    from gpt.model import GPTConfig, GPTModel

    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=97, context_length=12, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                    qkv_bias=qkv_bias, tie_weights=False, attn_impl=attn_impl)
    return GPTModel(cfg).eval()


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_cached_and_uncached_generation_agree_token_for_token(attn_impl):
    model = tiny_model(0, attn_impl, qkv_bias=True)
    prompt = torch.randint(0, 97, (3, 5))
    # 20 new tokens run well past the 12-token context, where both paths must crop the window the same way.
    fed = []  # the length of every input the model is given
    model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(args[0].shape[1]), with_kwargs=True)
    cached = generate(model, prompt, 20, context_length=12)
    assert fed == [5] + [1] * 7 + [12] * 12  # prompt once, one token per step, then the cropped window
    uncached = generate(NoCache(model), prompt, 20, context_length=12)
    assert torch.equal(cached, uncached)
    sampled = [generate(m, prompt, 20, 12, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
               for m in (model, NoCache(model))]
    assert torch.equal(*sampled)
    assert len(set(sampled[0][:, 5:].flatten().tolist())) > 10
    long_prompt = torch.randint(0, 97, (1, 30))  # longer than the context from the start
    assert torch.equal(generate(model, long_prompt, 4, 12), generate(NoCache(model), long_prompt, 4, 12))


@pytest.mark.parametrize("attn_impl", ["sdpa", "wrapper"])
def test_greedy_generate_picks_the_books_generate_text_simple_tokens(attn_impl):
    model = tiny_model(1, attn_impl, qkv_bias=False)
    with torch.no_grad():
        model.pos_emb.weight.normal_(0, 1.0)  # strong positions: an untrained model that does not repeat one token
    prompt = torch.randint(0, 97, (2, 4))
    book = generate_text_simple(model, prompt, max_new_tokens=15, context_size=12)  # past the context, too
    assert book.shape == (2, 19) and torch.equal(book[:, :4], prompt)
    assert torch.equal(generate(model, prompt, 15, context_length=12, temperature=0), book)
    assert len(set(book[:, 4:].flatten().tolist())) > 3  # not one token repeated: the comparison means something


def test_text_to_token_ids_and_back(gpt2_tokenizer):
    ids = text_to_token_ids("Every effort moves you", gpt2_tokenizer)
    assert ids.shape == (1, 4) and ids.dtype == torch.long
    assert ids[0].tolist() == gpt2_tokenizer.encode("Every effort moves you")
    assert token_ids_to_text(ids, gpt2_tokenizer) == "Every effort moves you"


@pytest.fixture
def three_threads():
    """Three torch threads (more than this machine's cores is fine): an uneven split of odd-sized weights."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape,out_features,bias", [((1, 1, 128), 301, True), ((2, 3, 128), 300, False),
                                                     ((8, 1, 64), 192, True)])
def test_threaded_thin_linear_matches_f_linear_and_splits(three_threads, monkeypatch, shape, out_features, bias):
    from gpt.generation import ThreadedThinLinear

    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(out_features, shape[-1])
    b = torch.randn(out_features) if bias else None
    calls = []
    for name in ("bmm", "baddbmm"):  # count the batched products: proof that the split path ran
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, **k: calls.append(a[-1].shape) or _real(*a, **k))
    with ThreadedThinLinear():
        y = F.linear(x, w, b)
    assert calls == [(3, shape[-1], out_features // 3)]  # one product of 3 blocks
    expected = x.double() @ w.double().T + (0 if b is None else b.double())  # by hand, in double precision
    torch.testing.assert_close(y, expected.float(), rtol=1e-5, atol=1e-5)


def test_threaded_thin_linear_leaves_wide_inputs_and_small_layers_alone(three_threads, monkeypatch):
    from gpt.generation import ThreadedThinLinear

    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: pytest.fail("split a layer it should leave alone"))
    x, w, b = torch.randn(ThreadedThinLinear.MAX_ROWS + 1, 64), torch.randn(300, 64), torch.randn(300)
    wide, small = F.linear(x, w, b), F.linear(x[:1], w[:2], b[:2])  # outside the mode: the plain kernel
    with ThreadedThinLinear():
        assert torch.equal(F.linear(x, w, b), wide)  # too many rows: the same kernel, bit for bit
        assert torch.equal(F.linear(x[:1], w[:2], b[:2]), small)  # too few output features to split


def small_gpt():
    from gpt.model import GPTConfig, GPTModel

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=301, context_length=32, emb_dim=192, n_heads=4, n_layers=2, drop_rate=0.0,
                    qkv_bias=True, tie_weights=True)
    return GPTModel(cfg).eval()


def count_splits(monkeypatch) -> list:
    """The (out, in) shapes of the weights split from now on (one baddbmm of (n, in, out / n) blocks per split
    linear layer with a bias)."""
    split = []
    real = torch.baddbmm
    record = lambda blocks: split.append((blocks.shape[0] * blocks.shape[2], blocks.shape[1]))  # noqa: E731
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: record(a[-1]) or real(*a, **k))
    return split


def test_cached_generation_with_threaded_layers_agrees_with_uncached(three_threads, monkeypatch):
    import gpt.generation

    model = small_gpt()
    monkeypatch.setattr(gpt.generation, "thin_product_plan", lambda m, rows: frozenset({(192, 192), (768, 192)}))
    split = count_splits(monkeypatch)
    prompt = torch.randint(0, 301, (2, 6))
    cached = generate(model, prompt, 20, context_length=32)
    # The planned shapes only (attention's 192 x 192 layers, the feed-forward's first), not its 192 x 768 second.
    assert set(split) == {(192, 192), (768, 192)}
    assert torch.equal(cached, generate(NoCache(model), prompt, 20, context_length=32))


def test_cached_generation_splits_nothing_where_the_plan_found_no_gain(three_threads, monkeypatch):
    import gpt.generation

    monkeypatch.setattr(gpt.generation, "thin_product_plan", lambda m, rows: frozenset())
    split = count_splits(monkeypatch)
    generate(small_gpt(), torch.randint(0, 301, (2, 6)), 5, context_length=32)
    assert split == []


def test_the_plan_keeps_the_shapes_whose_split_median_is_faster():
    from gpt.generation import faster_when_split

    times = {(768, 768): ([1.0, 9.0, 1.0], [0.5, 0.6, 9.0]),  # split median 0.6 < 1.0: split
             (3072, 768): ([1.0, 1.0, 0.1], [2.0, 0.1, 2.0])}  # split median 2.0 > 1.0: plain
    assert faster_when_split(times) == {(768, 768)}


def test_the_plan_is_measured_once_per_process_and_shape(three_threads, monkeypatch):
    import gpt.generation

    measured = []

    def fake_times(layers, rows):
        measured.append(rows)
        return {tuple(layer.weight.shape): ([1.0], [0.5 if layer.out_features == 301 else 2.0]) for layer in layers}

    monkeypatch.setattr(gpt.generation, "time_thin_products", fake_times)
    monkeypatch.setattr(gpt.generation, "_PLANS", {})
    model = small_gpt()
    assert gpt.generation.thin_product_plan(model, 1) == {(301, 192)}  # only the head gained, in this fake
    assert gpt.generation.thin_product_plan(small_gpt(), 1) == {(301, 192)}
    assert gpt.generation.thin_product_plan(model, 3) == {(301, 192)}
    assert measured == [1, 3]  # a second model of the same shapes reuses the plan; new rows measure again


def test_time_thin_products_times_each_shape_both_ways(three_threads):
    from gpt.generation import time_thin_products

    times = time_thin_products([nn.Linear(192, 576), nn.Linear(192, 768), nn.Linear(768, 192)], rows=2, repeats=2)
    assert set(times) == {(576, 192), (768, 192), (192, 768)}
    assert all(len(plain) == len(split) == 2 and min(plain + split) > 0 for plain, split in times.values())
