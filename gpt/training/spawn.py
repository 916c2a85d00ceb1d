"""ddp_spawn trains and tests in worker processes: only rank 0's trainer state comes back to the process that
called ``trainer.test``. The test records (instruct's answers) must come back too, or the report writes none. And
each worker shuts its gloo process group down with the others before it exits (see ``_wrapping_function``)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


class _RecordsLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher, also sending rank 0's ``test_records`` (already gathered from every rank) and
    closing the workers' process group together."""

    def _wrapping_function(self, *args, **kwargs) -> None:
        # Lightning destroys an NCCL process group at exit but leaves gloo's to the interpreter's shutdown, where a
        # worker that finished first could abort ("terminate called without an active exception") while the
        # others still ran. Every worker waits for the others, then all take it down together.
        super()._wrapping_function(*args, **kwargs)
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def get_extra_results(self, trainer) -> dict[str, Any]:
        return {**super().get_extra_results(trainer), "test_records": trainer.lightning_module.test_records}

    def update_main_process_results(self, trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        trainer.lightning_module.test_records = extra["test_records"]


def send_back_test_records(trainer) -> None:
    """Makes a spawning strategy (ddp_spawn, ddp_notebook...) return the test records to this process."""
    if type(trainer.strategy.launcher) is _MultiProcessingLauncher:
        trainer.strategy.launcher.__class__ = _RecordsLauncher  # same state, two more methods
