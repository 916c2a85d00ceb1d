"""The progress bar shown while the token cache builds: MB of text read, tokens, MB/s and time left, on stderr."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")  # launchers' rank variables


def first_process() -> bool:
    """True in one process only, whoever started them (Lightning, torchrun, srun)."""
    return all(int(os.environ.get(k, 0)) == 0 for k in RANK_VARIABLES)


class BuildProgress:
    """A bar over ``total_bytes`` of text (None: unknown, no ETA); silent in every process but the first."""

    def __init__(self, total_bytes: int | None, parts: int, enabled: bool = True):
        self.tokens = 0
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
                        desc=f"token cache: {parts} shard{'s' * (parts != 1)}", dynamic_ncols=True,
                        disable=not (enabled and first_process()),
                        mininterval=0.5 if sys.stderr.isatty() else 30)  # a log file (a cluster job): a line per 30 s

    def advance(self, nbytes: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.set_postfix_str(f"{self.tokens:,} tokens", refresh=False)
        self.bar.update(nbytes)

    def close(self) -> None:
        self.bar.close()
