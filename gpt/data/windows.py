"""The sliding windows a language model trains on, from a flat array of token ids.

cached token ids (one flat array, or shards seen as one) --> contiguous train / val split -->
windows (input = ids[i : i+L], target = ids[i+1 : i+L+1])
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from gpt.data.shards import ShardedIds
from gpt.errors import UserError

Ids = np.ndarray | ShardedIds  # one flat array, or shards seen as one


class GPTDataset(Dataset):
    """Windows of ``max_length`` tokens starting every ``stride`` tokens; the target is the input shifted by one."""

    def __init__(self, ids: Ids, max_length: int, stride: int):
        if max_length <= 0 or stride <= 0:
            raise UserError(f"max_length and stride must be positive, got {max_length} and {stride}")
        self.ids, self.max_length, self.stride = ids, max_length, stride

    def __len__(self) -> int:
        # A window needs max_length + 1 tokens (its target reaches one further).
        return max(0, (len(self.ids) - self.max_length - 1) // self.stride + 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        chunk = torch.from_numpy(np.asarray(self.ids[start : start + self.max_length + 1], dtype=np.int64))
        return chunk[:-1], chunk[1:]


def split_ids(ids: Ids, val_ratio: float) -> tuple[Ids, Ids]:
    """Contiguous split on token positions: the first part trains, the last ``val_ratio`` of the ids validates
    (text never trained on). Slices are views: nothing is read."""
    if not 0 < val_ratio < 1:
        raise UserError(f"data.val_ratio must be in (0, 1), got {val_ratio}")
    n_train = len(ids) - int(len(ids) * val_ratio)
    return ids[:n_train], ids[n_train:]
