"""Reproduce the spam recipe's figure: `train.py experiment=spam` from random weights, once per seed, printing each
run's test accuracy, wall time, CPU time and the load average around it (wall time on a shared machine overstates
what an idle one takes; CPU time does not).

    python benchmarks/spam_recipe.py --data SMSSpamCollection.tsv --seeds 1 2     # a local copy: label<TAB>text
    python benchmarks/spam_recipe.py --seeds 1 2                                    # online: the UCI file, fetched once

The recipe's target (issue 11): test accuracy >= 0.95 in <= 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(seed: int, data: str | None, run_dir: Path) -> tuple[float, float, float]:
    """(test accuracy, wall seconds, CPU seconds) of one run."""
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=spam", f"seed={seed}", f"hydra.run.dir={run_dir}"]
    if data:
        cmd.append(f"data.path={Path(data).resolve()}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"seed {seed}: train.py failed:\n{out.stderr[-2000:]}")
    found = re.search(r"test/acc: ([0-9.]+)", out.stdout)
    if found is None:
        sys.exit(f"seed {seed}: no test/acc line in train.py's output:\n{out.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(found.group(1)), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a local SMS Spam Collection (label<TAB>text); default: fetch the UCI file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            acc, wall, cpu = run(seed, args.data, Path(tmp) / f"seed{seed}")
            print(f"seed {seed}: test/acc {acc:.4f}  wall {wall / 60:.1f} min  CPU {cpu / 60:.1f} min  "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
