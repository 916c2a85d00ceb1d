"""The batched decoder behind serve.py: requests of different lengths decoded together give each one's own tokens."""

import threading

import pytest
import torch

from gpt.batching import BatchedDecoder, Request
from gpt.generation import generate_tokens
from gpt.model import GPTConfig, GPTModel

CTX = 32


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=97, context_length=CTX, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                               qkv_bias=False, tie_weights=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30)  # far-apart logits: the greedy choice does not hinge on the last bit of a sum
    return model


class Collector:
    """Gathers what the decoder emits for one request; ``done`` is set at its finish."""

    def __init__(self):
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.done = threading.Event()

    def __call__(self, token, reason):
        if token is None:
            self.reason = reason
            self.done.set()
        else:
            self.tokens.append(token)


def alone(model, ids, n, eos_id=None):
    out = []
    for t in generate_tokens(model, torch.tensor([ids]), n, CTX, eos_id=eos_id):
        if int(t) == eos_id:
            break
        out.append(int(t))
    return out


def test_requests_decoded_together_give_their_own_greedy_tokens(model):
    decoder = BatchedDecoder(model, max_batch=3, eos_id=5)  # 6 requests: 3 decode, 3 wait for a row
    prompts = [[int(x) for x in torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(n))]
               for n in (1, 7, 3, 12, 2, 30)]
    runs = [Collector() for _ in prompts]
    for ids, c in zip(prompts, runs):
        decoder.submit(Request(ids, max_tokens=10, emit=c))
    assert all(c.done.wait(30) for c in runs)
    for ids, c in zip(prompts, runs):
        expected = alone(model, ids, min(10, CTX - len(ids) + 1), eos_id=5)
        assert c.tokens == expected
        assert c.reason == ("stop" if len(expected) < min(10, CTX - len(ids) + 1) else "length")
    assert runs[-1].reason == "length" and len(runs[-1].tokens) == CTX - 30 + 1 <= 10  # ended by the full context
    assert decoder.busy == 0


def test_a_cancelled_request_frees_its_row_and_the_others_go_on(model):
    decoder = BatchedDecoder(model, max_batch=1, eos_id=None)
    first = Collector()
    request = Request([1, 2, 3], max_tokens=25, emit=lambda t, r: (first(t, r), request.cancel()))
    second = Collector()
    decoder.submit(request)
    decoder.submit(Request([4, 5], max_tokens=4, emit=second))  # waits for the only row
    assert second.done.wait(30)
    assert second.tokens == alone(model, [4, 5], 4) and second.reason == "length"
    assert 1 <= len(first.tokens) < 25 and not first.done.is_set()  # cut short, and told nothing more


def test_seeded_sampling_does_not_depend_on_the_other_rows(model):
    def sampled(others: int) -> list[int]:
        decoder = BatchedDecoder(model, max_batch=4, eos_id=None)
        runs = [Collector() for _ in range(others + 1)]
        for i, c in enumerate(runs):
            decoder.submit(Request([7, i], 8, c, temperature=1.0, top_k=20, seed=123 if i == 0 else i))
        assert all(c.done.wait(30) for c in runs)
        return runs[0].tokens

    assert sampled(0) == sampled(3)


def test_bad_requests_are_refused_before_they_queue(model):
    decoder = BatchedDecoder(model, max_batch=2, eos_id=None)
    for ids, max_tokens in (([], 5), ([1] * (CTX + 1), 5), ([1], 0)):
        with pytest.raises(ValueError, match="a request needs 1..32 prompt tokens and max_tokens >= 1"):
            decoder.submit(Request(ids, max_tokens, Collector()))
    assert decoder.busy == 0
