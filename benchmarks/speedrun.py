"""How much a recipe learns in a wall-clock budget: train on the first 90% of a text, then bits per character on the
last 10% (held out), the way evaluate.py measures it, with the steps and tokens trained and the command's wall time.

    python benchmarks/speedrun.py --text my.txt --budget 196              # experiment=speedrun on my.txt
    python benchmarks/speedrun.py --text my.txt --budget 196 -- optim.lr=2e-3   # the recipe plus overrides
    python benchmarks/speedrun.py --ablation --budget 120      # the KJV: the book's GPT, + each part, the recipe

The ablation trains the book's GPT (the default config), then the book's GPT plus each part (``--parts``, one
override string each, or several joined by spaces), then the recipe, all for the same budget. A part this checkout
does not know fails its row, and the others still run. Every row prints the load average: on a shared machine the
figures move with it, so compare rows taken together.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpt.data.sources.kjv import kjv_text  # noqa: E402

RECIPE = ["experiment=speedrun"]
# The modern parts, each a config choice (off by default in the book's GPT).
PARTS = ["model.pos=rope", "model.norm=rmsnorm", "model.ffn=swiglu", "model.n_kv_heads=2", "model.qk_norm=true",
         "model.bias=false", "model.scaled_init=true", "model.value_embeds=true"]


def split_text(text: str, tmp: Path) -> tuple[Path, Path]:
    """The first 90% to train on and the last 10% to score, as two files."""
    cut = int(len(text) * 0.9)
    train, test = tmp / "train.txt", tmp / "test.txt"
    train.write_text(text[:cut], encoding="utf-8")
    test.write_text(text[cut:], encoding="utf-8")
    return train, test


def run(name: str, overrides: list[str], train: Path, test: Path, budget: float, tmp: Path) -> dict:
    """One row: train.py with ``overrides`` for ``budget`` seconds, then evaluate.py on the held-out text."""
    run_dir = tmp / re.sub(r"[^\w.-]+", "_", name)
    # Cold caches: the tokenizer's training and the text's encoding are paid from the budget, as on a new text.
    command = [sys.executable, str(ROOT / "train.py"), *overrides, "data=text_file", f"data.path={train}",
               f"budget_s={budget}", f"hydra.run.dir={run_dir}", "logger=none", f"data.cache_dir={run_dir}/tokens",
               f"++tokenizer.cache_dir={run_dir}/tokenizer"]
    load = os.getloadavg()[0]
    start = time.monotonic()
    trained = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if trained.returncode != 0 or not ckpt.is_file():
        error = (trained.stderr.strip().splitlines() or ["no checkpoint written"])[-1]
        return {"name": name, "error": error}
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    evaluated = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"ckpt={ckpt}", f"data.path={test}"],
                               cwd=ROOT, capture_output=True, text=True, check=True)
    bpc = float(re.search(r"bits per character: ([\d.]+)", evaluated.stdout).group(1))
    return {"name": name, "bpc": bpc, "steps": saved["global_step"], "tokens": saved.get("tokens_seen", 0),
            "wall": wall, "load": load}


def show(row: dict) -> None:
    if "error" in row:
        print(f"{row['name']:<40} failed: {row['error']}", flush=True)
        return
    print(f"{row['name']:<40} {row['bpc']:>8.4f} {row['steps']:>7} {row['tokens']:>11,} {row['wall']:>8.1f} "
          f"{row['load']:>6.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, help="a UTF-8 text file (default: the King James Bible)")
    parser.add_argument("--budget", type=float, required=True, help="seconds per training command")
    parser.add_argument("--ablation", action="store_true", help="the book's GPT, + each part, then the recipe")
    parser.add_argument("--parts", nargs="+", default=PARTS, help="the ablation's parts, one override string each")
    parser.add_argument("overrides", nargs="*", help="after --: overrides added to the recipe")
    args = parser.parse_args()

    text = args.text.read_text(encoding="utf-8") if args.text else kjv_text()
    rows = [("recipe", RECIPE + args.overrides)]
    if args.ablation:
        rows = [("book's GPT", []), *((f"book's GPT + {p}", p.split()) for p in args.parts), *rows]
    print(f"{args.text or 'the KJV'}: {len(text):,} characters, budget {args.budget:g} s, {os.cpu_count()} CPUs")
    print(f"{'run':<40} {'bits/char':>8} {'steps':>7} {'tokens':>11} {'wall s':>8} {'load':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        train, test = split_text(text, Path(tmp))
        for name, overrides in rows:
            show(run(name, overrides, train, test, args.budget, Path(tmp)))


if __name__ == "__main__":
    main()
