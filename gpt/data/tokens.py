"""The token cache: a corpus encoded once per tokenizer into .npy shards, one per part (a file, a dataset shard)
or per ~100M tokens of a larger part, memory-mapped by every process after that.

- Keys: a shard's key hashes its part's fingerprint (path, size, mtime and sampled bytes; never the whole text),
  its place in the corpus and the tokenizer's config. A changed file invalidates its shard only.
- Builds: under a file lock, so however many processes (DDP ranks, nodes on a shared filesystem) ask at once,
  one encodes and the others then find the shards made. A killed build keeps its finished shards.
- Reuse: each shard is checked against its record (length, sampled checksum); a damaged one is rebuilt.
- ``shards/<part key>.<n>.json`` records shard n of a part (tokens, source, checksum, characters encoded so far);
  ``<corpus key>.json`` lists the corpus's shards in order.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from gpt.data.chunks import stream_safe_chunks
from gpt.data.encode import encode_stream, token_dtype
from gpt.data.progress import BuildProgress, first_process
from gpt.data.shard_file import atomic_file, checksum, damage, remove_stale_temps, write_shard
from gpt.data.shards import ShardedIds
from gpt.data.sources import DOC_SEPARATOR, Part, TextSource, parts_of
from gpt.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 16  # characters per chunk (64K): few calls into tiktoken, yet many chunks per thread
SHARD_TOKENS = 100_000_000  # a part larger than this is cut into several shards (at chunk ends): 200 MB each
# Between two parts the text is DOC_SEPARATOR, " <|endoftext|> ". It is cut just after the special token, where
# tiktoken itself splits the text before encoding (and where word-level tokenizers see whitespace), so each part
# encodes on its own to exactly its ids in the whole corpus: a part ends with TRAIL unless last, starts with LEAD
# unless first.
TRAIL, LEAD = DOC_SEPARATOR[:-1], DOC_SEPARATOR[-1:]


def _hash(value) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode("utf-8"), digest_size=16).hexdigest()


def part_keys(parts: list[Part], tokenizer: Tokenizer) -> list[str]:
    """Each part's key: its fingerprint, its place (first, last), the tokenizer and where shards are cut."""
    tokenizer_key = _hash(tokenizer.to_config())
    last = len(parts) - 1
    return [_hash([p.fingerprint(), i > 0, i < last, tokenizer_key, CHUNK_CHARS, SHARD_TOKENS])
            for i, p in enumerate(parts)]


def _part_text(parts: list[Part], i: int):
    return chain([LEAD] if i > 0 else [], parts[i].pieces(), [TRAIL] if i < len(parts) - 1 else [])


def _valid_record(shard_dir: Path, name: str, dtype: np.dtype) -> dict | None:
    """The record of shard ``name`` if the shard is whole; None (with a one-line warning if it was damaged)."""
    try:
        record = json.loads((shard_dir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    problem = damage(shard_dir / record["shard"], record["tokens"], dtype, record["checksum"])
    if problem is not None:
        print(f"warning: token cache shard {shard_dir / record['shard']} is damaged ({problem}); rebuilding it",
              file=sys.stderr)
        return None
    return record


def _valid_records(shard_dir: Path, key: str, dtype: np.dtype) -> list[dict]:
    """The part's whole shards in order, up to the first missing or damaged one (complete if the last is "last")."""
    records = []
    while not (records and records[-1]["last"]):
        record = _valid_record(shard_dir, f"{key}.{len(records)}", dtype)
        if record is None:
            break
        records.append(record)
    return records


def _write_json(path: Path, value) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def _build(parts: list[Part], i: int, key: str, done: list[dict], tokenizer: Tokenizer, shard_dir: Path,
           progress: BuildProgress, threads: int | None) -> list[dict]:
    """Encode part ``i`` into shards of about SHARD_TOKENS, after the ``done`` ones (a build that was killed).
    Chunks are cut the same way from any chunk start, so skipping the characters already encoded and going on
    gives the shards an uninterrupted build writes, byte for byte."""
    dtype = token_dtype(tokenizer.n_vocab)
    chunks = stream_safe_chunks(_part_text(parts, i), CHUNK_CHARS)
    read, records = 0, list(done)
    if done:
        for chunk in chunks:  # chunking runs at ~1 GB/s: skipping is cheap next to encoding
            read += len(chunk)
            if read >= done[-1]["chars"]:
                break
        if read != done[-1]["chars"]:
            return _build(parts, i, key, [], tokenizer, shard_dir, progress, threads)
        progress.advance(read, 0)
    encoded = encode_stream(chunks, tokenizer, threads)
    pending = next(encoded, None)
    while not records or pending is not None:
        tokens = 0

        def ids():
            nonlocal pending, read, tokens
            while pending is not None and tokens < SHARD_TOKENS:
                chars, chunk_ids = pending
                yield chunk_ids
                read, tokens = read + chars, tokens + len(chunk_ids)
                progress.advance(chars, len(chunk_ids))
                pending = next(encoded, None)

        shard = shard_dir / f"{key}.{len(records)}.npy"
        write_shard(shard, ids(), dtype)
        record = {"shard": shard.name, "tokens": tokens, "source": str(parts[i]), "checksum": checksum(shard),
                  "chars": read, "last": pending is None}
        _write_json(shard.with_suffix(".json"), record)  # the record last: a shard without one is rebuilt
        records.append(record)
    if parts[i].nbytes is not None:  # the bar counted characters; it is in bytes of text
        progress.advance(parts[i].nbytes - read, 0)
    return records


@contextmanager
def _lock(path: Path, progress: bool) -> Iterator[None]:
    """The cache's file lock: one builder at a time, on one host or many sharing the filesystem (fcntl locks die
    with their process, so a killed builder never leaves it taken)."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress and first_process():
            print(f"waiting for another process to finish the token cache ({path})", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def token_ids(source: TextSource, tokenizer: Tokenizer, cache_dir: str | Path, progress: bool = True,
              threads: int | None = None) -> ShardedIds:
    """The corpus of ``source`` as token ids, encoded into the cache at ``cache_dir`` if not there yet."""
    parts = parts_of(source)
    keys = part_keys(parts, tokenizer)
    dtype = token_dtype(tokenizer.n_vocab)
    cache_dir = Path(cache_dir)
    shard_dir = cache_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / "build.lock", progress):
        remove_stale_temps(cache_dir), remove_stale_temps(shard_dir)
        records = [_valid_records(shard_dir, k, dtype) for k in keys]
        todo = [i for i, r in enumerate(records) if not (r and r[-1]["last"])]
        if todo:
            sizes = [parts[i].nbytes for i in todo]
            bar = BuildProgress(None if None in sizes else sum(sizes), len(todo), progress)
            try:
                for i in todo:
                    records[i] = _build(parts, i, keys[i], records[i], tokenizer, shard_dir, bar, threads)
            finally:
                bar.close()
        shards = [r for part in records for r in part]
        manifest = cache_dir / f"{_hash(keys)}.json"
        if todo or not manifest.is_file():
            _write_json(manifest, {"tokenizer": tokenizer.to_config().get("name"), "shards": shards})
    return ShardedIds([shard_dir / r["shard"] for r in shards], [r["tokens"] for r in shards])
