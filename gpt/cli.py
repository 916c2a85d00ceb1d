"""What train.py and generate.py share around Hydra: one-line errors, and run directories that are never
overwritten and not left behind by a run that was refused."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

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


def is_rank_zero() -> bool:
    """False in every process but the first, whoever started them: Lightning's ddp relaunch (LOCAL_RANK, NODE_RANK),
    torchrun (RANK, GROUP_RANK) or srun (SLURM_PROCID)."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


_debug = False  # set by run_cli from HYDRA_FULL_ERROR=1 or --debug


def run_cli(main: Callable[[], None]) -> None:
    """Run a ``@hydra.main`` function; print a config error (unknown option, bad override) as ``error: ...``.

    ``HYDRA_FULL_ERROR=1`` or ``--debug`` on the command line shows the full traceback instead.
    """
    global _debug
    _debug = os.environ.get("HYDRA_FULL_ERROR") == "1" or "--debug" in sys.argv
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its own multi-line report
    try:
        main()
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as e:
        if _debug:
            raise
        _exit(one_line(e))


@contextmanager
def user_errors() -> Iterator[None]:
    """Inside the task function: a user error becomes one line and exit 1, before Hydra's job runner prints
    its own header; a run directory this call created is removed when the input was refused."""
    try:
        yield
    except USER_ERRORS as e:
        if _debug:
            raise
        run_dir, top = RunDirGuard.created or (None, None)
        if run_dir and not isinstance(e, ArithmeticError) and not (run_dir / "checkpoints").exists():
            shutil.rmtree(top, ignore_errors=True)
        _exit(one_line(e))


def _exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


class RunDirGuard(Callback):
    """A Hydra callback (see conf/config.yaml) that runs before Hydra writes anything into the run directory.

    An unwritable place, or a directory that already holds a run, is refused before anything is written;
    a directory holding a run is only entered to resume it (``ckpt_path=last``), and the resumed run's config
    then goes to ``.hydra/resume-<time>/`` so the original record stays. ``created`` tells ``user_errors``
    the run directory this process made and the topmost folder it made for it (what a refused run removes).
    """

    created: tuple[Path, Path] | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if not is_rank_zero():
            return  # another process of a DDP run joins the run directory its rank 0 made
        if config.get("trainer", {}).get("fast_dev_run"):
            return  # debug=fast: writes nothing, in the current directory
        run_dir = Path(config.hydra.run.dir).absolute()
        existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            _exit(f"cannot write the run directory {run_dir}: {existing} is a file; choose another hydra.run.dir")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            _exit(f"cannot write the run directory {run_dir}: {existing} is not writable; choose another hydra.run.dir")
        if run_dir.exists() and any(run_dir.iterdir()):
            if config.get("ckpt_path") != "last":
                _exit(
                    f"run directory {run_dir} already exists; choose a new hydra.run.dir, "
                    "or continue the run in it with ckpt_path=last"
                )
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = f".hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        elif not run_dir.exists():
            top = run_dir
            while not top.parent.exists():
                top = top.parent
            RunDirGuard.created = (run_dir, top)
