"""Kill a small real training run with SIGKILL at random moments, resume it each time with ckpt_path=last, and
compare the end with an uninterrupted run: every weight tensor bit for bit, and the final val loss.

    python benchmarks/kill_resume.py --trials 5 --kills 2     # prints one line per trial and a summary
    python benchmarks/kill_resume.py --task classify          # or instruct: fine-tuning, from random weights

Each trial: start the run, wait for its first checkpoint, SIGKILL it after a random delay, resume (up to
``--kills`` times), then let it finish. The run is tiny (2 layers x 32, dropout on so the RNG matters): pretrain
has word-level tokens and 3 epochs over a 20 kB text; classify and instruct have GPT-2 tokens and small generated
files (60 labeled texts, 40 instruction records), so a trial takes about a minute on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
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

MODEL = ["model.n_layers=2", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32", "model.drop_rate=0.1"]
TASKS = {
    "pretrain": [
        "data.batch_size=8", "optim.warmup_steps=5", "tokenizer=simple_v2", "trainer.val_check_interval=10",
        "trainer.limit_val_batches=4", "sample.max_new_tokens=5", "trainer.max_steps=40", "checkpoint.every_n_steps=5",
        "data=text_file", "data.path={tmp}/corpus.txt", "data.cache_dir={tmp}/cache",
    ],
    "classify": [
        "task=classify", "data.path={tmp}/texts.tsv", "data.batch_size=4", "optim.warmup_steps=2",
        "trainer.val_check_interval=4", "trainer.limit_val_batches=2", "trainer.max_steps=30",
        "checkpoint.every_n_steps=3",
    ],
    "instruct": [
        "task=instruct", "data.path={tmp}/records.json", "task.response_tokens=2", "data.batch_size=4",
        "optim.warmup_steps=2", "trainer.val_check_interval=4", "trainer.limit_val_batches=2", "trainer.max_steps=30",
        "checkpoint.every_n_steps=3",
    ],
}


def write_data(tmp: Path) -> None:
    (tmp / "corpus.txt").write_text(kjv_text()[:20_000], encoding="utf-8")
    spam = [f"spam\tWIN a FREE prize {i}! Call 0800 now" for i in range(20)]
    ham = [f"ham\tsee you at lunch on day {i}" for i in range(40)]
    (tmp / "texts.tsv").write_text("\n".join(spam + ham) + "\n", encoding="utf-8")
    records = [{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}."} for i in range(40)]
    (tmp / "records.json").write_text(json.dumps(records), encoding="utf-8")


def command(tmp: Path, task: str, run_dir: Path, *extra: str) -> list[str]:
    args = [a.format(tmp=tmp) for a in TASKS[task]]
    return [sys.executable, str(ROOT / "train.py"), *MODEL, *args, f"hydra.run.dir={run_dir}", *extra]


def val_loss(stdout: str) -> str:
    return re.findall(r"^val/loss: (\S+)$", stdout, re.M)[-1]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def trial(tmp: Path, task: str, run_dir: Path, kills: int, rng: random.Random) -> tuple[int, str]:
    """Kill the run up to ``kills`` times at random moments after a checkpoint exists; return kills done, val loss."""
    done = 0
    for _ in range(kills):
        last = run_dir / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen(command(tmp, task, run_dir, "ckpt_path=last"), cwd=ROOT, stdout=subprocess.DEVNULL,
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
    final = subprocess.run(command(tmp, task, run_dir, "ckpt_path=last"), cwd=ROOT, capture_output=True, text=True)
    if final.returncode != 0:
        raise SystemExit(f"resume failed:\n{final.stderr[-2000:]}")
    return done, val_loss(final.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=list(TASKS), default="pretrain")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_data(tmp)
        ref = subprocess.run(command(tmp, args.task, tmp / "ref"), cwd=ROOT, capture_output=True, text=True, check=True)
        ref_loss, ref_weights = val_loss(ref.stdout), weights(tmp / "ref")
        exact = 0
        for i in range(args.trials):
            run_dir = tmp / f"trial{i}"
            kills, loss = trial(tmp, args.task, run_dir, args.kills, rng)
            w = weights(run_dir)
            same = w.keys() == ref_weights.keys() and all(torch.equal(w[k], ref_weights[k]) for k in w)
            exact += same and loss == ref_loss
            print(f"trial {i}: {kills} kills, val/loss {loss} (reference {ref_loss}), weights bit-identical: {same}")
        print(f"task={args.task}: {exact}/{args.trials} trials ended bit-identical to the uninterrupted run")


if __name__ == "__main__":
    main()
