"""Kill a small real training run with SIGKILL at random moments, resume it each time with ckpt_path=last, and
compare the end with an uninterrupted run: every weight tensor bit for bit, and the final val loss.

    python benchmarks/kill_resume.py --trials 5 --kills 2     # prints one line per trial and a summary

Each trial: start the run, wait for its first checkpoint, SIGKILL it after a random delay, resume (up to
``--kills`` times), then let it finish. The run is tiny (2 layers x 32, word-level tokens, dropout on so the RNG
matters, 3 epochs over a 20 kB text) so a trial takes about a minute on 2 busy cores.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt.data.sources.kjv import kjv_text  # noqa: E402

ARGS = [
    "model.n_layers=2", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32", "model.drop_rate=0.1",
    "data.batch_size=8", "optim.warmup_steps=5", "tokenizer=simple_v2", "trainer.val_check_interval=10",
    "trainer.limit_val_batches=4", "sample.max_new_tokens=5", "trainer.max_steps=40", "checkpoint.every_n_steps=5",
]


def command(tmp: Path, run_dir: Path, *extra: str) -> list[str]:
    data = ["data=text_file", f"data.path={tmp / 'corpus.txt'}", f"data.cache_dir={tmp / 'cache'}"]
    return [sys.executable, str(ROOT / "train.py"), *ARGS, *data, f"hydra.run.dir={run_dir}", *extra]


def val_loss(stdout: str) -> str:
    return re.findall(r"^val/loss: (\S+)$", stdout, re.M)[-1]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def trial(tmp: Path, run_dir: Path, kills: int, rng: random.Random) -> tuple[int, str]:
    """Kill the run up to ``kills`` times at random moments after a checkpoint exists; return kills done, val loss."""
    done = 0
    for _ in range(kills):
        last = run_dir / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen(command(tmp, run_dir, "ckpt_path=last"), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        mtime = last.stat().st_mtime if last.exists() else None
        while proc.poll() is None and (not last.exists() or last.stat().st_mtime == mtime):
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 4))  # anywhere: mid-step, mid-validation, mid-checkpoint-write
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done += 1
    final = subprocess.run(command(tmp, run_dir, "ckpt_path=last"), cwd=ROOT, capture_output=True, text=True)
    if final.returncode != 0:
        raise SystemExit(f"resume failed:\n{final.stderr[-2000:]}")
    return done, val_loss(final.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "corpus.txt").write_text(kjv_text()[:20_000], encoding="utf-8")
        ref = subprocess.run(command(tmp, tmp / "ref"), cwd=ROOT, capture_output=True, text=True, check=True)
        ref_loss, ref_weights = val_loss(ref.stdout), weights(tmp / "ref")
        exact = 0
        for i in range(args.trials):
            run_dir = tmp / f"trial{i}"
            kills, loss = trial(tmp, run_dir, args.kills, rng)
            w = weights(run_dir)
            same = w.keys() == ref_weights.keys() and all(torch.equal(w[k], ref_weights[k]) for k in w)
            exact += same and loss == ref_loss
            print(f"trial {i}: {kills} kills, val/loss {loss} (reference {ref_loss}), weights bit-identical: {same}")
        print(f"{exact}/{args.trials} trials ended bit-identical to the uninterrupted run")


if __name__ == "__main__":
    main()
