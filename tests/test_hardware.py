"""trainer.precision=auto: native bf16 read from the CPU's flags (faked here), never from the vendor name."""

import os
import platform
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT
from gpt import hardware
from gpt.hardware import cpu_info, native_bf16, resolve_precision

ZEN3 = {"avx2", "fma"}
ZEN4 = {"avx2", "avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}


def test_cpu_info_reads_the_model_and_flags_of_the_first_cpu(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    assert cpu_info(cpuinfo) == ("Some CPU", {"fpu", "avx2", "avx512_bf16"})
    assert cpu_info(tmp_path / "absent") == ("unknown", set())


def test_native_bf16_needs_amx_or_avx512_bf16():
    assert native_bf16(ZEN3) is None
    assert native_bf16(ZEN4) == "avx512_bf16"
    assert native_bf16(SAPPHIRE_RAPIDS) == "amx_bf16"


@pytest.mark.parametrize("flags,want", [(ZEN3, "32-true"), (ZEN4, "bf16-mixed"), (SAPPHIRE_RAPIDS, "bf16-mixed"),
                                        (set(), "32-true")])
def test_auto_on_a_cpu_follows_its_flags(flags, want):
    precision, why = resolve_precision("auto", "cpu", flags)
    assert precision == want
    assert ("no native bf16" in why) == (want == "32-true")


def test_auto_is_bf16_on_a_gpu_and_a_set_precision_is_kept():
    assert resolve_precision("auto", "gpu", ZEN3)[0] == "bf16-mixed"
    assert resolve_precision("32-true", "cpu", SAPPHIRE_RAPIDS) == ("32-true", "as set")
    assert resolve_precision("bf16-mixed", "cpu", ZEN3) == ("bf16-mixed", "as set")


@pytest.mark.parametrize("flags,precision,chunk", [(ZEN3, "32-true", 256), (ZEN4, "bf16-mixed", 1024)])
def test_train_py_resolves_auto_and_speed_follows_the_precision(monkeypatch, capsys, flags, precision, chunk):
    from gpt.training.setup import trainer_arguments

    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Fake CPU", flags))
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config")
    assert cfg.trainer.precision == "auto"  # the CPU default
    args = trainer_arguments(cfg)
    assert args["precision"] == precision and cfg.speed.loss_chunk == chunk
    assert capsys.readouterr().out.startswith(f"precision: {precision} (auto")


KEPT = """
import ctypes, sys, torch
from gpt.hardware import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2: ten size_t counters
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
for _ in range(3):
    torch.ones(16 * 2**20).sum()  # a 64 MB block, allocated and freed, as each training step's activations
print(mallinfo2().fordblks)  # bytes that malloc holds free for the next allocation
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_stays_with_malloc_for_the_next_step():
    """By default glibc gives a freed 64 MB block back to the kernel (the next step faults its 16,384 pages in
    again); kept, malloc holds it free for reuse."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # as a run in this process may have set

    def free_bytes(mode):
        out = subprocess.run([sys.executable, "-c", KEPT, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        return int(out.stdout)

    assert free_bytes("default") < 64 * 2**20
    assert free_bytes("keep") >= 64 * 2**20
