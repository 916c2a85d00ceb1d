"""Checkpoint files: written atomically, read back safely (``weights_only``) with errors that name the file, and
the random-generator states an exact resume needs. Turning a checkpoint back into a model is the task's job
(``gpt.tasks.load_trained``)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from gpt.errors import UserError


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or does not fit this run; the message names the file."""


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed into place.

    A rename within one directory is atomic: a kill at any moment leaves either the previous file or the new
    complete one under ``path``, never a half-written file (at worst an orphan ``.tmp`` file, ignored on load).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself survive a power cut
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_readable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return True
    except Exception:  # any failure means "not a good checkpoint"; the caller reports the one it was asked for
        return False


def last_good_checkpoint(directory: Path, exclude: Path) -> Path | None:
    """The newest ``.ckpt`` in ``directory`` (other than ``exclude``) that loads, or None."""
    others = [p for p in directory.glob("*.ckpt") if p.resolve() != exclude.resolve()]
    for candidate in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        if _is_readable(candidate):
            return candidate
    return None


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, refused in one line if this machine does not have it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device={device} is not a device torch knows; use cpu, cuda or cuda:<n>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={device} asks for a CUDA GPU and this machine has none; use device=cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"device={device} asks for a CUDA GPU this machine lacks: it has {count}, from cuda:0")
    return device


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True, mmap: bool = False
) -> dict:
    """The dict stored in a checkpoint, or a CheckpointError that names the real cause: the file is missing, cannot
    be read (permission, I/O), is meant for a device this machine lacks, or is damaged (then the newest checkpoint
    beside it that loads is named).

    weights_only: tensors and plain containers only, so a crafted file cannot run code while loading.
    mmap: tensors stay on disk until used (a cheap look at the hyperparameters of a large checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give a .ckpt file or a run directory under outputs/")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; give a .ckpt file or a run directory under outputs/")
    try:
        path.open("rb").close()
    except OSError as e:  # PermissionError, or an I/O error of the disk or network filesystem
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}; check its permissions") from e
    try:
        map_location = check_device(map_location)
    except UserError as e:
        raise CheckpointError(f"cannot load checkpoint {path}: {e}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            raise CheckpointError(f"{path} holds more than tensors and plain values; refusing to unpickle it (it "
                                  "could run code). Checkpoints written by train.py never do") from e
        good = last_good_checkpoint(path.parent, exclude=path)
        hint = f"the last good checkpoint there is {good}" if good else f"no other checkpoint in {path.parent} loads"
        reason = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is damaged: truncated or corrupt ({reason}); {hint}") from e


def check_same_model(saved: dict, current: dict, path: str | Path) -> None:
    """Refuse to resume ``current`` model fields from a checkpoint trained with other ``saved`` fields."""
    diff = [f"model.{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in current if saved.get(k) != current[k]]
    if diff:
        raise CheckpointError(
            f"checkpoint {path} holds a different model shape: {'; '.join(diff)}; "
            "resume with the model settings it was trained with"
        )


def rng_states() -> dict:
    """Every random number generator training may draw from, as plain values and tensors."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    """Put back what ``rng_states`` returned, so the next random draw is the one the saved run would have made."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file as given, or for a run directory its best checkpoint (else its last)."""
    path = Path(path)
    if path.is_dir():
        for candidate in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt"):
            if (path / candidate).is_file():
                return path / candidate
        raise CheckpointError(f"no checkpoint in {path}: expected checkpoints/best.ckpt or checkpoints/last.ckpt")
    return path
