"""The refactor guard: the default run's first 30 training losses (seed 42) stay what they were when recorded.

Recorded by ``python tests/test_golden.py --record`` before the platform refactor. On the host kind that recorded
them (same CPU features) they must match bit for bit; on another kind, float kernels differ in their last bits, so
the losses must agree within 1e-4 relative.
"""

import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "pretrain_losses.json"
STEPS = 30


def cpu_kind() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return "+".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "unknown"


def default_run_losses(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "train.py", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
         "trainer.precision=32-true",  # recorded in fp32; precision=auto would pick bf16 on a host with native bf16
         f"hydra.run.dir={run_dir}"],
        cwd=root, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("train/loss")
    return [e.value for e in sorted(events, key=lambda e: e.step)]


def test_default_run_losses_match_the_recorded_ones(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    losses = default_run_losses(tmp_path / "run")
    assert len(losses) == STEPS
    if golden["cpu"] == cpu_kind():
        assert losses == golden["losses"]
    else:
        for got, want in zip(losses, golden["losses"]):
            assert abs(got - want) <= 1e-4 * abs(want), (got, want)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps({"cpu": cpu_kind(), "losses": default_run_losses(Path(tmp) / "run")}) + "\n")
    print(GOLDEN.read_text())
