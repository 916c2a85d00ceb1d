"""What the entry points share around Hydra: one-line errors for the user's mistakes, a traceback for bugs, and run
directories that are never shared, never overwritten, and not left behind by a run that was refused."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from gpt.errors import UserError

# The user's mistakes: a one-line message, exit status 1. Anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, HydraException, OmegaConfBaseException)

REPORT = ("this is a bug, not a mistake in your input: please report it to the maintainers with the traceback "
          "above and the command you ran")


def one_line(e: BaseException) -> str:
    """The message of an error as one line, shaped for the user rather than the programmer."""
    if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
        group, _, name = e.missing_cfg_file.rpartition("/")
        return f"unknown {group} config {name!r}; choose one of: {', '.join(sorted(e.options))}"
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def is_rank_zero() -> bool:
    """False in every process but the first, whoever started them: Lightning's ddp relaunch (LOCAL_RANK, NODE_RANK),
    torchrun (RANK, GROUP_RANK) or srun (SLURM_PROCID)."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


_debug = False  # set by run_cli from HYDRA_FULL_ERROR=1 or --debug


def run_cli(main: Callable[[], None]) -> None:
    """Run a ``@hydra.main`` function: a user error (bad option, bad value, missing file) is printed as
    ``error: ...``; any other exception prints its traceback and asks for a bug report. Exit status 1 either way.

    ``HYDRA_FULL_ERROR=1`` or ``--debug`` on the command line shows the full traceback of user errors too.
    """
    global _debug
    _debug = os.environ.get("HYDRA_FULL_ERROR") == "1" or "--debug" in sys.argv
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises instead of printing its own multi-line report
    try:
        main()
    except USER_ERRORS as e:
        if _debug:
            raise
        _exit(one_line(e))
    except Exception:
        _report_bug()


def _report_bug() -> NoReturn:
    traceback.print_exc()
    kept = RunDirGuard.created and RunDirGuard.created[0]
    _exit(REPORT + (f"; the run directory {kept} and its log are kept" if kept else ""))


@contextmanager
def user_errors() -> Iterator[None]:
    """Around the task function, so that Hydra's job runner prints nothing of its own. A user error removes the run
    directory this process created, if nothing but Hydra's own files was written there yet, and is one line. Any
    other error is a bug: its traceback goes to the terminal and to the run's log file, and the run directory stays.
    """
    try:
        yield
    except USER_ERRORS as e:
        if _debug:
            raise
        remove_refused_run_dir()
        _exit(one_line(e))
    except Exception as e:
        if _debug:
            raise
        _log_to_files(f"unexpected {type(e).__name__}: {REPORT}", sys.exc_info())
        _report_bug()


def _log_to_files(message: str, exc_info) -> None:
    """Log to the run's log file(s) only: the console gets the traceback from ``run_cli``."""
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _exit(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


# Files Hydra itself writes into a run directory before the task runs; a run directory holding nothing else
# has no result in it. (DDP's other ranks log to train_ddp_process_<n>.log.)
_HYDRA_FILES = {".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}


def remove_refused_run_dir() -> None:
    """Remove the run directory this process created, and then each parent folder it created that is empty.

    Only while it holds nothing but Hydra's files: anything else (a checkpoint, TensorBoard events, another
    process's file) keeps it. Parents are removed with rmdir, which never removes a folder with anything in it,
    so runs started beside this one in the same folders are never touched.
    """
    if RunDirGuard.created is None:
        return
    run_dir, parents = RunDirGuard.created
    RunDirGuard.created = None
    entries = sorted(run_dir.rglob("*"), reverse=True)  # children before their folder
    names = {p.relative_to(run_dir).as_posix() for p in entries}
    if any(name not in _HYDRA_FILES and not (name.endswith(".log") and "/" not in name) for name in names):
        return
    try:
        for path in entries:
            path.rmdir() if path.is_dir() else path.unlink()
        run_dir.rmdir()
        for parent in parents:  # innermost first
            parent.rmdir()
    except OSError:  # something appeared meanwhile, or a parent is shared: leave the rest
        pass


class RunDirGuard(Callback):
    """A Hydra callback (see conf/config.yaml) that picks and creates the run directory before Hydra writes into it.

    A time-stamped directory (``hydra.run.dir`` containing ``${now:...}``, the default) is created with os.mkdir,
    which fails if another process made it first; then ``<name>-1``, ``<name>-2``, ... are tried, so two runs started
    in the same second get two directories. The chosen path is written back into ``hydra.run.dir``, so that
    Hydra, Lightning and the DDP processes Lightning starts (``hydra.run.dir=<rank 0's dir>``) all use it.

    A directory named outright is never shared either: one that holds a run is refused, unless the run is being
    resumed (``ckpt_path=last``); the resumed run's config then goes to ``.hydra/resume-<time>/`` so the original
    record stays. An unwritable place is refused before anything is written. ``created`` records the run directory
    and the parent folders this process made (innermost first), all ``remove_refused_run_dir`` may remove.
    """

    created: tuple[Path, list[Path]] | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if not is_rank_zero():
            return  # another process of a DDP run joins the run directory its rank 0 made
        if config.get("trainer", {}).get("fast_dev_run"):
            return  # debug=fast: writes nothing, in the current directory
        run_dir = Path(config.hydra.run.dir).absolute()
        stamped = "${now:" in OmegaConf.to_container(config.hydra.run)["dir"]
        existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
        if not existing.is_dir():
            _exit(f"cannot write the run directory {run_dir}: {existing} is a file; choose another hydra.run.dir")
        if not os.access(existing, os.W_OK | os.X_OK):
            _exit(f"cannot write the run directory {run_dir}: {existing} is not writable; choose another hydra.run.dir")
        if not stamped and run_dir.is_dir() and any(run_dir.iterdir()):
            if config.get("ckpt_path") != "last":
                _exit(
                    f"run directory {run_dir} already exists; choose a new hydra.run.dir, "
                    "or continue the run in it with ckpt_path=last"
                )
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = f".hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
            return
        parents = _make_parents(run_dir.parent)
        chosen = _make_run_dir(run_dir, suffix=stamped)
        if chosen is not None:
            RunDirGuard.created = (chosen, parents)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(chosen or run_dir)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones this call created, innermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    made = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
            made.append(path)
        except FileExistsError:  # another run made it meanwhile: it is theirs as much as ours
            pass
    return made[::-1]


def _make_run_dir(run_dir: Path, suffix: bool) -> Path | None:
    """Create ``run_dir`` (or, with ``suffix``, the first free one of ``run_dir``, ``run_dir-1``, ``run_dir-2``, ...)
    and return it; None when ``run_dir`` is an empty directory that already existed (it is used, not owned)."""
    n = 0
    while True:
        candidate = run_dir.with_name(f"{run_dir.name}-{n}") if n else run_dir
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            if not suffix:
                return None  # an empty directory named outright (a non-empty one was refused above)
            n += 1
