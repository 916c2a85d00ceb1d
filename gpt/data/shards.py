"""Token ids spread over several .npy shards, seen as one flat array: windows may span a shard boundary.

Only the shard paths are pickled (ddp_spawn sends the datasets to its processes); each process memory-maps the
same files on first use, so no process holds the ids in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ShardedIds:
    """The concatenation of the 1-D arrays in ``paths`` (of ``lengths`` ids), or the slice ``[start, stop)`` of it."""

    def __init__(self, paths: list[Path], lengths: list[int], start: int = 0, stop: int | None = None):
        self.paths, self.lengths = [Path(p) for p in paths], [int(n) for n in lengths]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])  # shard i holds [o[i], o[i+1])
        total = int(self.offsets[-1])
        self.start, self.stop = start, total if stop is None else stop
        if not 0 <= self.start <= self.stop <= total:
            raise IndexError(f"slice [{start}, {stop}) outside {total} ids")
        self._maps: list[np.ndarray] | None = None

    def _shards(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(p, mmap_mode="r") for p in self.paths]
        return self._maps

    @property
    def dtype(self) -> np.dtype:
        return self._shards()[0].dtype if self.paths else np.dtype(np.uint16)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> ShardedIds:
        """A view (no copy): ``np.asarray`` reads it."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardedIds takes contiguous slices only")
        start, stop, _ = key.indices(len(self))
        return ShardedIds(self.paths, self.lengths, self.start + start, self.start + max(start, stop))._share(self)

    def _share(self, other: ShardedIds) -> ShardedIds:
        self._maps = other._maps
        return self

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        shards, parts, pos = self._shards(), [], self.start
        i = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        while pos < self.stop:
            while self.offsets[i + 1] <= pos:  # past the end of shard i (or an empty shard)
                i += 1
            end = min(self.stop, int(self.offsets[i + 1]))
            parts.append(shards[i][pos - self.offsets[i] : end - self.offsets[i]])
            pos = end
        out = np.concatenate(parts) if parts else np.empty(0, self.dtype)
        return out if dtype is None else out.astype(dtype, copy=False)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}
