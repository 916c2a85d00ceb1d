"""Many generation requests decoded together, as a server needs: one KV-cache row per request, one shared forward
pass per step for every request in flight. Pure torch and threads: no web framework.

A decoding step pushes one token per sequence through every weight matrix, so it costs about the time the weights
take to stream from memory, whether one row goes through or eight: eight requests decoded together get close to
eight times the tokens per second of one. The rows hold sequences of different lengths, so the cache carries one
length per row (``KVCache.length`` as a tensor) and each row attends only to its own positions.

Each request's prompt is run alone (``start=0``, the plain causal path ``generate_tokens`` runs), straight into its
cache row; then it joins the shared steps. Rows stay packed at the front of the cache: a finished or cancelled
request's row takes the last row's contents, so a step runs on ``cache.kv[:, :, :n]`` without gathering.
Sampling is per row, with each request's own settings and generator, so a request's tokens do not depend on which
others share its steps (at temperature 0, the same tokens as ``generate_tokens`` alone, up to float rounding).
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpt.generation import ThreadedThinLinear, sample_next
from gpt.model import GPTModel, KVCache

# Called from the decoding thread: (token id, None) for each new token, then (None, finish reason) once, where the
# reason is "stop" (<|endoftext|>), "length" (max_tokens or the context is full) or "error: <message>".
Emit = Callable[[int | None, str | None], None]


@dataclass
class Request:
    """One generation: prompt ids, at most ``max_tokens`` new ones, sampled with these settings."""

    ids: list[int]
    max_tokens: int
    emit: Emit
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: fresh randomness
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Free this request's row at the next step (a client that went away)."""
        self.cancelled.set()


@dataclass
class _Row:
    request: Request
    generator: torch.Generator | None
    last: int  # the newest token, fed at the next step
    produced: int = 1


class BatchedDecoder:
    """Decodes up to ``max_batch`` requests together on one thread; more wait in line, in order of arrival."""

    def __init__(self, model: GPTModel, max_batch: int, eos_id: int | None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.eos_id = eos_id
        self.device = next(model.parameters()).device
        self.ctx = model.cfg.context_length
        self.cache = model.new_cache(max_batch, self.ctx)
        self.lengths = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # positions held by each row
        self.rows: list[_Row] = []  # row i of the cache belongs to rows[i]
        self.waiting: queue.Queue[Request] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="decoder", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        """Queue a request; its tokens arrive through ``request.emit`` from the decoding thread. The prompt must
        have between 1 and ``context_length`` tokens, and ``max_tokens`` must be >= 1 (the server checks both)."""
        if not 1 <= len(request.ids) <= self.ctx or request.max_tokens < 1:
            raise ValueError(f"a request needs 1..{self.ctx} prompt tokens and max_tokens >= 1")
        self.waiting.put(request)

    @property
    def busy(self) -> int:
        """Requests decoding or waiting."""
        return len(self.rows) + self.waiting.qsize()

    def _loop(self) -> None:
        fast_linear = ThreadedThinLinear() if self.device.type == "cpu" else contextlib.nullcontext()
        with torch.no_grad(), fast_linear:
            while True:
                self._admit(block=not self.rows)
                self._drop([i for i, r in enumerate(self.rows) if r.request.cancelled.is_set()], None)
                if self.rows:
                    try:
                        self._step()
                    except Exception as e:  # a bug must not take the server down: fail the requests in flight
                        self._drop(list(range(len(self.rows))), f"error: {e}")

    def _admit(self, block: bool) -> None:
        """Move waiting requests into free rows (waiting for one when nothing is decoding), running each prompt."""
        while len(self.rows) < self.max_batch:
            try:
                request = self.waiting.get(block=block)
            except queue.Empty:
                return
            block = False
            if request.cancelled.is_set():
                continue
            try:
                self._prefill(request)
            except Exception as e:
                request.emit(None, f"error: {e}")

    def _rows_view(self, begin: int, end: int, length: int | torch.Tensor) -> KVCache:
        """A KVCache over rows begin:end of the shared one (same storage), holding ``length`` positions."""
        view = copy.copy(self.cache)
        view.kv = self.cache.kv[:, :, begin:end]
        view.length = length
        return view

    def _prefill(self, request: Request) -> None:
        row = len(self.rows)
        ids = torch.tensor([request.ids], device=self.device)
        logits = self.model(ids, cache=self._rows_view(row, row + 1, 0))[:, -1]
        self.lengths[row] = len(request.ids)
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        token = self._sample(logits, request, generator)
        self.rows.append(_Row(request, generator, token))
        self._after_token(row)

    def _step(self) -> None:
        n = len(self.rows)
        tokens = torch.tensor([[r.last] for r in self.rows], device=self.device)
        logits = self.model(tokens, cache=self._rows_view(0, n, self.lengths[:n]))[:, -1]  # advances lengths[:n]
        done = []
        for i, r in enumerate(self.rows):
            r.last = self._sample(logits[i : i + 1], r.request, r.generator)
            r.produced += 1
            if self._finish_reason(i) is None:
                r.request.emit(r.last, None)
            else:
                done.append(i)
        for i in reversed(done):  # from the back, so each swap moves a row that stays
            self._finish(i)

    def _sample(self, logits: torch.Tensor, request: Request, generator: torch.Generator | None) -> int:
        return int(sample_next(logits, request.temperature, request.top_k, request.top_p, generator)[0])

    def _finish_reason(self, i: int) -> str | None:
        r = self.rows[i]
        if self.eos_id is not None and r.last == self.eos_id:
            return "stop"
        if r.produced >= r.request.max_tokens or int(self.lengths[i]) >= self.ctx:
            return "length"  # no room to feed the newest token back in: the context is full
        return None

    def _after_token(self, i: int) -> None:
        """Emit row i's first token, or finish it at once."""
        if self._finish_reason(i) is None:
            self.rows[i].request.emit(self.rows[i].last, None)
        else:
            self._finish(i)

    def _finish(self, i: int) -> None:
        r = self.rows[i]
        reason = self._finish_reason(i)
        if reason == "length" and r.last != self.eos_id:
            r.request.emit(r.last, None)  # the last token counts; only <|endoftext|> is not text
        self._drop([i], reason)

    def _drop(self, indices: list[int], reason: str | None) -> None:
        """Free these rows (highest first), telling their requests ``reason`` unless it is None (cancelled)."""
        for i in sorted(indices, reverse=True):
            row = self.rows[i]
            last = len(self.rows) - 1
            if i != last:  # keep the rows packed: the last row moves into the freed one
                n = int(self.lengths[last])
                self.cache.kv[:, :, i, :, :n] = self.cache.kv[:, :, last, :, :n]
                self.lengths[i] = self.lengths[last]
                self.rows[i] = self.rows[last]
            self.rows.pop()
            if reason is not None:
                row.request.emit(None, reason)
