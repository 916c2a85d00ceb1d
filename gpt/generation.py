"""Turning a model's logits into text: sampling rules and the decode loop. Pure torch."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Collection, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from gpt.errors import UserError
from gpt.tokenizer import Tokenizer


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
    """Reject sampling settings that have no meaning, with a message that says what is allowed."""
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= vocab_size):
        raise UserError(f"top_k must be in 1..{vocab_size} (the vocabulary size) or null, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise UserError(f"top_p must be in (0, 1] or null, got {top_p!r}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V) -> (B,).

    temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, cut to the
    ``top_k`` most likely tokens and/or the smallest set whose probability reaches ``top_p``, and sampled.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the most likely token always stays).
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class ThreadedThinLinear(TorchFunctionMode):
    """While active, a linear layer fed only a few rows on a CPU splits its weight across the threads.

    A cached decoding step feeds one token per sequence through every weight matrix, so it runs as fast as the
    weights stream from memory. MKL computes such thin products (a few rows) on one core on some hosts: on the
    2-core Zen 3 host this was written on, F.linear read a 50,257 x 768 head at about 10 GB/s while two threads
    read memory at about 19 GB/s. Cutting the weight's output rows into one block per thread and running the blocks
    as one batched product (baddbmm, parallel over the blocks) uses every core: decoding ran 1.2-1.5x faster there.
    On an Intel host with AMX the plain product was the faster one, so ``thin_product_plan`` measures which weights
    gain on the host at hand and only those (``shapes``) are split. Same weights, same sums; only the rounding of
    the last bit can differ. Weights of another tensor type (quantized ones) are left to their own kernels.
    """

    MAX_ROWS = 32  # from about 64 rows on, the plain product was as fast (measured)

    def __init__(self, shapes: Collection[tuple[int, int]] | None = None):
        super().__init__()
        self.shapes = None if shapes is None else frozenset(shapes)  # None: every weight that qualifies

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and not torch.compiler.is_compiling():  # in a compiled block the compiler picks kernels
            return self._linear(*args, **kwargs)
        return func(*args, **kwargs)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n = torch.get_num_threads()
        out_features, in_features = weight.shape
        rows = x.numel() // in_features
        chosen = self.shapes is None or (out_features, in_features) in self.shapes
        plain = type(weight) not in (torch.Tensor, nn.Parameter) or x.device.type != "cpu"
        if plain or not chosen or n == 1 or rows > self.MAX_ROWS or out_features < 64 * n:
            return F.linear(x, weight, bias)
        x2 = x.reshape(rows, in_features)
        split = out_features - out_features % n  # the rows that divide evenly into n blocks; the rest go plainly
        blocks = weight[:split].view(n, split // n, in_features).transpose(1, 2)  # (n, in, out / n)
        xs = x2.expand(n, rows, in_features)
        if bias is None:
            y = torch.bmm(xs, blocks)
        else:
            y = torch.baddbmm(bias[:split].view(n, 1, split // n), xs, blocks)  # (n, rows, out / n)
        y = y.transpose(0, 1).reshape(rows, split)
        if split < out_features:
            rest = F.linear(x2, weight[split:], None if bias is None else bias[split:])
            y = torch.cat([y, rest], dim=1)
        return y.view(*x.shape[:-1], out_features)


_PLANS: dict[tuple, frozenset[tuple[int, int]]] = {}  # this process's measured plans: one per model shape and rows


def faster_when_split(times: dict[tuple[int, int], tuple[list[float], list[float]]]) -> frozenset[tuple[int, int]]:
    """The weight shapes whose median split time beats the median plain time; ``times`` maps a shape to
    (plain seconds, split seconds) over the repeats."""
    return frozenset(s for s, (plain, split) in times.items() if statistics.median(split) < statistics.median(plain))


def time_thin_products(layers: list[nn.Linear], rows: int, repeats: int = 3) -> dict:
    """Seconds of ``rows``-row products through every layer, per weight shape: (plain, split) lists of ``repeats``.

    Passes over all the layers alternate plain, split, plain, ..., after one warm-up pass of each, so that both
    strategies find the weights where decoding finds them (for a model larger than the caches, in memory)."""
    split = ThreadedThinLinear()
    inputs = [torch.zeros(rows, layer.in_features, dtype=layer.weight.dtype) for layer in layers]
    times: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    for repeat in range(repeats + 1):
        for i, product in enumerate((F.linear, split._linear)):
            total: dict[tuple[int, int], float] = {}
            for layer, x in zip(layers, inputs):
                t0 = time.perf_counter()
                product(x, layer.weight, layer.bias)
                shape = tuple(layer.weight.shape)
                total[shape] = total.get(shape, 0.0) + time.perf_counter() - t0
            if repeat:  # the first pass of each only warms up
                for shape, seconds in total.items():
                    times.setdefault(shape, ([], []))[i].append(seconds)
    return times


@torch.no_grad()
def thin_product_plan(model: nn.Module, rows: int) -> frozenset[tuple[int, int]]:
    """The weight shapes of ``model``'s linear layers that ``ThreadedThinLinear`` should split at ``rows`` rows on
    this host: measured once per process for each set of shapes, dtype, rows and thread count (a fraction of a
    second at gpt2-small), then reused."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear) and type(m.weight) is nn.Parameter]
    if torch.get_num_threads() == 1 or rows > ThreadedThinLinear.MAX_ROWS or not layers:
        return frozenset()
    key = (tuple((tuple(m.weight.shape), m.weight.dtype) for m in layers), rows, torch.get_num_threads())
    if key not in _PLANS:
        _PLANS[key] = faster_when_split(time_thin_products(layers, rows))
    return _PLANS[key]


@torch.no_grad()
def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """The book's greedy loop (section 4.7): re-run the model on the last ``context_size`` tokens and append the
    most likely next token, ``max_new_tokens`` times. idx (B, T) -> (B, T + max_new_tokens). ``generate`` with
    ``temperature=0`` picks the same tokens, faster (KV cache)."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]  # (B, V): the last position predicts the next token
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def text_to_token_ids(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """Text -> a batch of one row of token ids (1, T), as the model takes them (section 5.1)."""
    return torch.tensor(tokenizer.encode(text)).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer: Tokenizer) -> str:
    """A batch of one row of token ids (1, T) -> text (section 5.1)."""
    return tokenizer.decode(token_ids.squeeze(0).tolist())


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each row, (B,), one step at a time, until ``max_new_tokens`` or every row has
    produced ``eos_id``. A row that has finished keeps yielding ``eos_id``. The model sees at most the last
    ``context_length`` tokens.

    A model with ``new_cache`` (GPTModel) keeps a KV cache: the prompt is run once, then each step feeds only the
    newest token; on a CPU through ``ThreadedThinLinear`` for the weights ``thin_product_plan`` found faster split
    on this host. Once the sequence outgrows the context, every step re-runs
    the last ``context_length`` tokens (positions restart at 0 in that window, so stored keys no longer apply),
    exactly as without a cache.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens!r}")
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    cache = None
    if hasattr(model, "new_cache") and max_new_tokens > 0:
        cache = model.new_cache(idx.shape[0], min(idx.shape[1], context_length) + max_new_tokens - 1)
    fresh = idx[:, -context_length:]  # the tokens the cache has not seen yet
    split = cache is not None and idx.device.type == "cpu" and thin_product_plan(model, idx.shape[0])
    for _ in range(max_new_tokens):
        if cache is not None and cache.length + fresh.shape[1] <= min(context_length, cache.max_len):
            with ThreadedThinLinear(split) if split else contextlib.nullcontext():
                logits = model(fresh, cache=cache)[:, -1, :]
        else:
            cache = None  # past the context: no going back to the cache
            logits = model(idx[:, -context_length:])[:, -1, :]  # (B, V) logits of the last position
        next_id = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            next_id = next_id.masked_fill(finished, eos_id)
            finished |= next_id == eos_id
        yield next_id
        if eos_id is not None and bool(finished.all()):
            return
        idx = torch.cat([idx, next_id[:, None]], dim=1)
        fresh = next_id[:, None]


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_length: int, **kwargs) -> torch.Tensor:
    """``idx`` (B, T) followed by the generated tokens (B, T + n); see ``generate_tokens`` for the arguments."""
    new = list(generate_tokens(model, idx, max_new_tokens, context_length, **kwargs))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx


def complete(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int, **kwargs) -> str:
    """The text ``model`` writes after ``prompt`` (its last ``context_length`` tokens), up to ``<|endoftext|>``;
    ``kwargs`` are ``generate_tokens``'s sampling arguments (greedy without them)."""
    ctx = model.cfg.context_length
    ids = tokenizer.encode(prompt)[-ctx:]
    idx = torch.tensor([ids], device=model.tok_emb.weight.device)
    new = []
    for token in generate_tokens(model, idx, max_new_tokens, ctx, eos_id=tokenizer.eot_id, **kwargs):
        if token.item() == tokenizer.eot_id:
            break
        new.append(token.item())
    return tokenizer.decode(new)
