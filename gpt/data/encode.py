"""Encoding a stream of text chunks on every core, in order, with memory bounded by the queue."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from gpt.tokenizer import Tokenizer

IN_FLIGHT_PER_THREAD = 4  # chunks queued per thread: a few hundred KB of text and ids in memory, whatever the corpus


def token_dtype(n_vocab: int) -> np.dtype:
    """The smallest integer type that holds every id: uint16 for GPT-2's 50,257 tokens."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.int32)


def usable_cores() -> int:
    """The cores this process may run on (a cluster job's allocation), not every core of the host."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def encode_stream(chunks: Iterable[str], tokenizer: Tokenizer,
                  threads: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(characters, ids) of each chunk, in order, encoded on one thread per usable core. tiktoken releases the GIL
    while it encodes, so chunks run in parallel; a bounded queue keeps memory flat and, unlike batch calls, never waits
    for a batch's slowest chunk before starting the next ones."""
    threads = threads or usable_cores()
    dtype = token_dtype(tokenizer.n_vocab)

    as_array = getattr(tokenizer, "encode_array", None)  # tiktoken's: ids without a Python list in between

    def encode(chunk: str) -> tuple[int, np.ndarray]:
        # allowed_special: the corpus joins its documents with <|endoftext|> on purpose (DOC_SEPARATOR)
        if as_array is not None:
            return len(chunk), as_array(chunk, allowed_special=True).astype(dtype)
        return len(chunk), np.array(tokenizer.encode(chunk, allowed_special=True), dtype=dtype)

    with ThreadPoolExecutor(threads) as pool:
        queued: deque[Future[tuple[int, np.ndarray]]] = deque()
        for chunk in chunks:
            queued.append(pool.submit(encode, chunk))
            if len(queued) >= IN_FLIGHT_PER_THREAD * threads:
                yield queued.popleft().result()
        while queued:
            yield queued.popleft().result()
