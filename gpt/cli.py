"""What train.py and generate.py share around Hydra: one-line errors, and run directories that are never
overwritten and not left behind by a run that was refused."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

# Bad input from the user: a one-line message, exit status 1. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, PermissionError, NotADirectoryError, ArithmeticError)


def one_line(e: BaseException) -> str:
    """The message of an error as one line, shaped for the user rather than the programmer."""
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        return f"unknown {group} config {name!r}; choose one of: {', '.join(sorted(e.options))}"
    text = str(e.args[0]) if e.args and isinstance(e, KeyError) else str(e)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


def run_cli(main: Callable[[], None]) -> None:
    """Run a ``@hydra.main`` function; print any user or config error as ``error: ...`` and exit 1.

    ``HYDRA_FULL_ERROR=1`` or ``--debug`` on the command line shows the full traceback instead.
    """
    debug = os.environ.get("HYDRA_FULL_ERROR") == "1" or "--debug" in sys.argv
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its own multi-line report
    try:
        main()
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


class RunDirGuard(Callback):
    """A Hydra callback (see conf/config.yaml) that runs before Hydra writes anything into the run directory.

    - An unwritable place, or a directory that already holds a run, is refused before anything is written;
      a directory holding a run is only entered to resume it (``ckpt_path=last``), and the resumed run's
      config goes to ``.hydra/resume-<time>/`` so the original record stays.
    - A run this call created and that fails on bad input before any checkpoint is removed again.
    """

    def __init__(self) -> None:
        self.created: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return  # a DDP child started by Lightning joins the run directory its rank 0 made
        run_dir = Path(config.hydra.run.dir).absolute()
        existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            _refuse(f"cannot write the run directory {run_dir}: {existing} is a file; choose another hydra.run.dir")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            _refuse(f"cannot write the run directory {run_dir}: {existing} is not writable; choose another hydra.run.dir")
        if run_dir.exists() and any(run_dir.iterdir()):
            if config.get("ckpt_path") != "last":
                _refuse(
                    f"run directory {run_dir} already exists; choose a new hydra.run.dir, "
                    "or continue the run in it with ckpt_path=last"
                )
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = f".hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        elif not run_dir.exists():
            self.created = run_dir

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        # A failed job's exception sits in _return_value (the public property would raise it).
        failed = job_return.status.name == "FAILED"
        bad_input = failed and isinstance(job_return._return_value, (ValueError, FileNotFoundError, KeyError))
        if bad_input and self.created is not None and not (self.created / "checkpoints").exists():
            shutil.rmtree(self.created, ignore_errors=True)
