"""The token cache: a corpus encoded once per tokenizer into one .npy shard per part (a file, a dataset shard),
memory-mapped by every process after that.

- Keys: a shard's key hashes its part's fingerprint (path, size, mtime and sampled bytes; never the whole text),
  its place in the corpus and the tokenizer's config. A changed file invalidates its shard only.
- Builds: under a file lock, so however many processes (DDP ranks, nodes on a shared filesystem) ask at once,
  one encodes and the others then find the shards made. A killed build keeps its finished shards.
- Reuse: each shard is checked against its record (length, sampled checksum); a damaged one is rebuilt.
- ``<corpus key>.json`` lists the corpus's shards in order: shard, tokens, source, checksum.
"""

from __future__ import annotations

import hashlib
import json
import sys
from itertools import chain
from pathlib import Path

import numpy as np
from filelock import FileLock

from gpt.data.chunks import stream_safe_chunks
from gpt.data.encode import encode_stream, token_dtype
from gpt.data.progress import BuildProgress
from gpt.data.shard_file import atomic_file, checksum, damage, remove_stale_temps, write_shard
from gpt.data.shards import ShardedIds
from gpt.data.sources import DOC_SEPARATOR, Part, TextSource, parts_of
from gpt.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 16  # characters per chunk (64K): few calls into tiktoken, yet many chunks per thread
# Between two parts the text is DOC_SEPARATOR, " <|endoftext|> ". It is cut just after the special token, where
# tiktoken itself splits the text before encoding (and where word-level tokenizers see whitespace), so each part
# encodes on its own to exactly its ids in the whole corpus: a part ends with TRAIL unless last, starts with LEAD
# unless first.
TRAIL, LEAD = DOC_SEPARATOR[:-1], DOC_SEPARATOR[-1:]


def _hash(value) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode("utf-8"), digest_size=16).hexdigest()


def shard_keys(parts: list[Part], tokenizer: Tokenizer) -> list[str]:
    tokenizer_key = _hash(tokenizer.to_config())
    last = len(parts) - 1
    return [_hash([p.fingerprint(), i > 0, i < last, tokenizer_key]) for i, p in enumerate(parts)]


def _part_text(parts: list[Part], i: int):
    return chain([LEAD] if i > 0 else [], parts[i].pieces(), [TRAIL] if i < len(parts) - 1 else [])


def _record(shard_dir: Path, key: str) -> dict | None:
    try:
        return json.loads((shard_dir / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None


def _valid_record(shard_dir: Path, key: str, dtype: np.dtype) -> dict | None:
    """The shard's record if the shard is whole; None (with a one-line warning if it was damaged) to rebuild it."""
    record = _record(shard_dir, key)
    if record is None:
        return None
    problem = damage(shard_dir / record["shard"], record["tokens"], dtype, record["checksum"])
    if problem is not None:
        print(f"warning: token cache shard {shard_dir / record['shard']} is damaged ({problem}); rebuilding it",
              file=sys.stderr)
        return None
    return record


def _write_json(path: Path, value) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def _build(parts: list[Part], i: int, key: str, tokenizer: Tokenizer, shard_dir: Path, progress: BuildProgress,
           threads: int | None) -> dict:
    dtype = token_dtype(tokenizer.n_vocab)
    shard = shard_dir / f"{key}.npy"
    read = 0

    def ids():
        nonlocal read
        for chars, chunk_ids in encode_stream(stream_safe_chunks(_part_text(parts, i), CHUNK_CHARS), tokenizer, threads):
            progress.advance(chars, len(chunk_ids))
            read += chars
            yield chunk_ids

    tokens = write_shard(shard, ids(), dtype)
    if parts[i].nbytes is not None:  # the bar counted characters; it is in bytes of text
        progress.advance(parts[i].nbytes - read, 0)
    record = {"shard": shard.name, "tokens": tokens, "source": str(parts[i]), "checksum": checksum(shard)}
    _write_json(shard_dir / f"{key}.json", record)  # the record last: a shard without one is rebuilt
    return record


def token_ids(source: TextSource, tokenizer: Tokenizer, cache_dir: str | Path, progress: bool = True,
              threads: int | None = None) -> ShardedIds:
    """The corpus of ``source`` as token ids, encoded into the cache at ``cache_dir`` if not there yet."""
    parts = parts_of(source)
    keys = shard_keys(parts, tokenizer)
    dtype = token_dtype(tokenizer.n_vocab)
    cache_dir = Path(cache_dir)
    shard_dir = cache_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / "build.lock"):
        remove_stale_temps(cache_dir), remove_stale_temps(shard_dir)
        records = [_valid_record(shard_dir, k, dtype) for k in keys]
        todo = [i for i, r in enumerate(records) if r is None]
        if todo:
            sizes = [parts[i].nbytes for i in todo]
            bar = BuildProgress(None if None in sizes else sum(sizes), len(todo), progress)
            try:
                for i in todo:
                    records[i] = _build(parts, i, keys[i], tokenizer, shard_dir, bar, threads)
            finally:
                bar.close()
        manifest = cache_dir / f"{_hash(keys)}.json"
        if todo or not manifest.is_file():
            _write_json(manifest, {"tokenizer": tokenizer.to_config().get("name"), "shards": records})
    return ShardedIds([shard_dir / r["shard"] for r in records], [r["tokens"] for r in records])
