"""ddp_spawn trains and tests in worker processes: only rank 0's trainer state comes back to the process that
called ``trainer.test``. The test records (instruct's answers) must come back too, or the report writes none."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


class _RecordsLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher, also sending rank 0's ``test_records`` (already gathered from every rank)."""

    def get_extra_results(self, trainer) -> dict[str, Any]:
        return {**super().get_extra_results(trainer), "test_records": trainer.lightning_module.test_records}

    def update_main_process_results(self, trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        trainer.lightning_module.test_records = extra["test_records"]


def send_back_test_records(trainer) -> None:
    """Makes a spawning strategy (ddp_spawn, ddp_notebook...) return the test records to this process."""
    if type(trainer.strategy.launcher) is _MultiProcessingLauncher:
        trainer.strategy.launcher.__class__ = _RecordsLauncher  # same state, two more methods
