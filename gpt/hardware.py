"""What this machine computes fast, read from its CPU flags: what ``trainer.precision=auto`` means here.

Pure Python and torch: no Lightning, no Hydra. Never guessed from a vendor name: the same machine kind lands on
CPUs with and without native bf16.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

# The CPU flags (as Linux names them in /proc/cpuinfo) that mean native bf16 arithmetic:
# AMX tiles (Intel Sapphire Rapids and later) and AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and later).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_info(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU listed in ``path``; ("unknown", empty set) where there is no such file
    (macOS, Windows), which then counts as "no native bf16"."""
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown", set()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def native_bf16(flags: set[str]) -> str | None:
    """The flag that gives this CPU native bf16 arithmetic, or None."""
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def describe_cpu(model: str, flags: set[str]) -> str:
    """One line for a benchmark's or a run's header: the CPU model and the features that decide its speed."""
    return f"{model}; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in SHOWN_FLAGS)


def resolve_precision(precision: str, accelerator: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(Lightning precision, why) for ``trainer.precision``; anything but "auto" is kept as given.

    "auto" is bf16-mixed on a GPU (16-mixed before Ampere), and on a CPU with native bf16; 32-true on any other
    CPU, where bf16 is emulated and runs far slower than fp32 (about 20x on a Zen 3). Measured with bf16 autocast
    in a plain training loop: 2.1x fp32 at gpt2-small on an Intel host with AMX; on a Zen 4 host with AVX512-BF16
    and no AMX (a busy machine) 1.3x at tiny and 1.4x at gpt2-small, with one gpt2-small run at 0.8x.
    """
    if precision != "auto":
        return precision, "as set"
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if gpu:
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "16-mixed", "auto on a GPU without bf16 (older than Ampere)"
        return "bf16-mixed", "auto on a GPU"
    if flags is None:
        flags = cpu_info()[1]
    flag = native_bf16(flags)
    if flag:
        return "bf16-mixed", f"auto: this CPU has native bf16 ({flag})"
    return "32-true", "auto: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag), which is slower than fp32"


# glibc hands a freed block of more than a few MB back to the kernel at once (and trims its heap's free top), so the
# next training step's equal-sized block is faulted in again page by page: a 2-layer, 128-wide GPT's bf16 step on a
# 2-core Zen 4 spent a fifth of its time there (81 ms a step; 64 ms with freed memory kept for reuse).
KEEP_FREED_BELOW = 1 << 30  # bytes
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks under 1 GiB for reuse instead of returning them to the kernel, in this
    process now and, through GLIBC_TUNABLES (unless already set), in the processes it starts (ddp_spawn's ranks).
    A training process reaches its peak memory in its first step and stays there, so nothing is lost by keeping
    it. False where the C library is not glibc (macOS, musl, Windows): nothing changes there."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    kept = bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BELOW) and mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BELOW))
    if kept:
        os.environ.setdefault("GLIBC_TUNABLES", f"glibc.malloc.trim_threshold={KEEP_FREED_BELOW}:"
                                                f"glibc.malloc.mmap_threshold={KEEP_FREED_BELOW}")
    return kept
