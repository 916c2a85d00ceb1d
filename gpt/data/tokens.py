"""Token ids on disk: a text is encoded once per tokenizer, streamed to a .npy file, and memory-mapped after that."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpt.tokenizer import Tokenizer


def token_dtype(n_vocab: int) -> np.dtype:
    """The smallest integer type that holds every id: uint16 for GPT-2's 50,257 tokens."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.int32)


def cache_key(text: str, tokenizer: Tokenizer) -> str:
    """Same text + same tokenizer -> same key; any change to either -> a new cache file."""
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(json.dumps(tokenizer.to_config(), sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:32]


CHUNK_CHARS = 1 << 14  # characters per chunk (16K): small pieces keep every thread busy to the end
IN_FLIGHT_PER_THREAD = 4  # chunks queued per thread: a few hundred KB of text and ids in memory, whatever the corpus


def _safe_cut(text: str, i: int) -> int | None:
    """Where to cut ``text`` near the newline ``text[i]`` so that both sides encode to the ids they have in the
    whole text, or None. GPT-2's pre-tokeniser splits a run of whitespace before a non-space character into the run
    less its last character and that last character (which may join the next word, as in " the"): so cut after a
    lone newline ("x\n|y") or before the last character of a longer run ("x\n|\ny", "x |\ny"). The book's
    word-level tokenizers drop whitespace, so any of these cuts is safe for them too."""
    if not 0 < i < len(text) - 1 or text[i + 1].isspace():
        return None
    return i if text[i - 1].isspace() else i + 1


def safe_chunks(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut only where encoding the pieces one by one gives
    exactly the ids of encoding the whole text (see ``_safe_cut``)."""
    start = 0
    while start < len(text):
        newline, cut = text.find("\n", start + size), None
        while newline != -1 and cut is None:
            cut = _safe_cut(text, newline)
            newline = text.find("\n", newline + 1)
        end = len(text) if cut is None else cut
        yield text[start:end]
        start = end


def _encode_stream(text: str, tokenizer: Tokenizer) -> Iterator[list[int]]:
    """Token ids of ``text``, chunk by chunk in order, encoded on one thread per core. tiktoken releases the GIL
    while it encodes, so the chunks run in parallel; a bounded queue keeps memory flat and, unlike batch calls,
    never waits for a batch's slowest chunk before starting the next ones."""
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        queued: deque[Future[list[int]]] = deque()
        for chunk in safe_chunks(text, CHUNK_CHARS):
            # allowed_special: the corpus joins its documents with <|endoftext|> on purpose (DOC_SEPARATOR)
            queued.append(pool.submit(tokenizer.encode, chunk, allowed_special=True))
            if len(queued) >= IN_FLIGHT_PER_THREAD * threads:
                yield queued.popleft().result()
        while queued:
            yield queued.popleft().result()


def cached_token_ids(text: str, tokenizer: Tokenizer, cache_dir: str | Path) -> np.ndarray:
    """Token ids of ``text``, computed once and memory-mapped from ``cache_dir`` afterwards.

    The ids stream to disk as they are encoded, so memory stays flat however long the text is.
    """
    path = Path(cache_dir) / f"{cache_key(text, tokenizer)}.npy"
    if not path.exists():
        dtype = token_dtype(tokenizer.n_vocab)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw, tmp = path.with_suffix(f".{os.getpid()}.ids"), path.with_suffix(f".{os.getpid()}.tmp")
        n = 0
        with open(raw, "w+b") as f:
            for ids in _encode_stream(text, tokenizer):
                f.write(np.fromiter(ids, dtype=dtype, count=len(ids)).tobytes())
                n += len(ids)
            # Now that the length is known: the .npy header, then the ids copied behind it.
            f.seek(0)
            with open(tmp, "wb") as out:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(f, out)
        raw.unlink()
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache file
    return np.load(path, mmap_mode="r")
