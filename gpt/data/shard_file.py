"""One shard of the token cache on disk: a .npy of ids written atomically, and the checks that tell a whole shard
from a truncated, zero-filled or otherwise damaged one."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SAMPLES = 64  # blocks hashed by the checksum: O(1) per shard, so a warm start costs the same for any corpus
SAMPLE_BYTES = 4096
TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that becomes ``path`` (fsynced, renamed) when the block succeeds and is
    removed when it fails. The name holds the host, process and a random part: unique on a shared filesystem."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def _header(dtype: np.dtype, n: int) -> bytes:
    from io import BytesIO

    out = BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": (n,)})
    return out.getvalue()


def write_shard(path: Path, arrays: Iterable[np.ndarray], dtype: np.dtype) -> int:
    """Stream ``arrays`` into the .npy file ``path`` (atomically); the number of ids written. The header is padded
    to a fixed size whatever the count, so it is written first and rewritten once the count is known."""
    placeholder = _header(dtype, 0)
    n = 0
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(placeholder)
        for ids in arrays:
            f.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())
            n += len(ids)
        header = _header(dtype, n)
        assert len(header) == len(placeholder), "npy header size depends on the count"
        f.seek(0)
        f.write(header)
        f.flush()
    return n


def checksum(path: Path) -> str:
    """A hash of the file's size and of ``SAMPLES`` blocks spread evenly over it (the first and last included)."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for k in range(SAMPLES):
            f.seek(max(0, size - SAMPLE_BYTES) * k // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def damage(path: Path, tokens: int, dtype: np.dtype, expected: str) -> str | None:
    """Why the shard at ``path`` is not the one described (missing, wrong length, wrong checksum), or None."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    want = len(_header(dtype, tokens)) + tokens * dtype.itemsize
    if size != want:
        return f"{size} bytes, expected {want}"
    try:
        ids = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        return f"unreadable: {e}"
    if ids.shape != (tokens,) or ids.dtype != dtype:
        return f"holds {ids.shape} {ids.dtype}, expected ({tokens},) {dtype}"
    if checksum(path) != expected:
        return "checksum mismatch"
    return None


def remove_stale_temps(directory: Path) -> int:
    """Delete temporary files left by killed writers. Call it only while holding the cache's lock: then no one
    is writing."""
    stale = list(directory.glob(f".*{TEMP_SUFFIX}"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
