"""Data at scale: a synthetic corpus larger than memory through the sharded token cache.

    python benchmarks/data_scale.py [--gb 5] [--file-mb 32] [--threads N] [--raw-gb G] [--dir .cache/data_scale] [--keep]

1. writes --gb of text: the KJV repeated with its books shuffled, in files of --file-mb;
2. encodes it with raw tiktoken (each file whole, encode_ordinary_batch on --threads threads, ids dropped), or its
   first --raw-gb GB of files (the files are alike: MB/s compare, and the baseline costs a fraction of the time);
3. builds the token cache (data=folder's path: streamed, sharded) on the same threads: MB/s, peak RSS, cache size;
4. trains 20 steps from the warm cache (python train.py data=folder ...): time to the first step, peak RSS;
5. trains 20 steps from the warm cache on 2 processes (trainer=ddp_cpu): each process's peak RSS;
6. builds the cache again, SIGKILLs it at 50% of its shards, resumes it: the shards must be byte-identical.
Each measurement runs in its own process; peak RSS is that process's maximum resident set (wait4).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RAW = """
import sys, time
from pathlib import Path
from gpt.tokenizer import GPT2Tokenizer
enc, threads = GPT2Tokenizer().encoding, int(sys.argv[2])
t0, tokens = time.perf_counter(), 0
for f in sorted(Path(sys.argv[1]).glob("*.txt"))[: int(sys.argv[3])]:
    text = f.read_text(encoding="utf-8")
    slices = [text[i : i + 65536] for i in range(0, len(text), 65536)]
    tokens += sum(map(len, enc.encode_ordinary_batch(slices, num_threads=threads)))
print(time.perf_counter() - t0, tokens)
"""

PREP = """
import sys, time
from gpt.data.sources.folder import Folder
from gpt.data.tokens import token_ids
from gpt.tokenizer import GPT2Tokenizer
tok = GPT2Tokenizer()
t0 = time.perf_counter()
ids = token_ids(Folder(sys.argv[1]), tok, sys.argv[2], threads=int(sys.argv[3]))
print(time.perf_counter() - t0, len(ids))
"""


def run(args: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in MB) of a child process; stderr passes through (the progress bar)."""
    t0 = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}", "BENCH_T0": str(t0),
                                 **(env or {})})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"error: {' '.join(args[:3])}... failed (status {status})")
    return out, time.time() - t0, usage.ru_maxrss / 1024


def books() -> list[str]:
    from gpt.data.sources.kjv import kjv_text

    blocks = kjv_text().split("\n\n")  # title, book, title, book, ...
    return ["\n\n".join(blocks[i : i + 2]) + "\n\n" for i in range(0, len(blocks), 2)]


def write_corpus(folder: Path, gb: float, file_mb: float) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    parts, rng = books(), random.Random(0)
    n_files = max(1, round(gb * 1000 / file_mb))
    for i in range(n_files):
        path = folder / f"{i:05d}.txt"
        if path.is_file():
            continue
        size, out = 0, []
        while size < file_mb * 1e6:
            rng.shuffle(parts)
            out.extend(parts)
            size += sum(len(p) for p in parts)
        tmp = path.with_suffix(".part")
        tmp.write_text("".join(out), encoding="utf-8")
        tmp.rename(path)
    return n_files


def dir_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern))


def prep(corpus: Path, cache: Path, threads: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREP, str(corpus), str(cache), str(threads)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=5.0, help="corpus size in GB (default 5)")
    p.add_argument("--file-mb", type=float, default=32.0, help="size of each corpus file in MB")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="encoding threads, both ways (all cores)")
    p.add_argument("--raw-gb", type=float, default=None, help="raw tiktoken on this many GB of the files (all)")
    p.add_argument("--dir", type=Path, default=ROOT / ".cache" / "data_scale", help="where corpus and caches go")
    p.add_argument("--keep", action="store_true", help="keep the corpus and caches afterwards")
    a = p.parse_args()
    corpus, cache, resumed = a.dir / f"corpus_{a.gb:g}gb", a.dir / "cache", a.dir / "cache_resumed"
    free = shutil.disk_usage(a.dir.parent if not a.dir.exists() else a.dir).free / 1e9
    if free < a.gb * 2.5:
        sys.exit(f"error: {a.gb:g} GB of text and two caches need ~{a.gb * 2.5:.0f} GB; {free:.0f} GB free. Use --gb")
    for c in (cache, resumed):
        shutil.rmtree(c, ignore_errors=True)

    t0 = time.time()
    n_files = write_corpus(corpus, a.gb, a.file_mb)
    mb = dir_bytes(corpus, "*.txt") / 1e6
    print(f"corpus: {mb:,.0f} MB in {n_files} files ({time.time() - t0:.0f} s to write); {a.threads} threads",
          flush=True)

    raw_files = n_files if a.raw_gb is None else max(1, min(n_files, round(a.raw_gb * 1000 / a.file_mb)))
    raw_mb = mb * raw_files / n_files
    out, _, raw_rss = run([sys.executable, "-c", RAW, str(corpus), str(a.threads), str(raw_files)])
    raw_s, raw_tokens = float(out.split()[0]) * n_files / raw_files, int(out.split()[1])
    print(f"raw tiktoken:  {mb / raw_s:6.1f} MB/s  ({raw_tokens:,} tokens in {raw_files} of {n_files} files, "
          f"{raw_mb:,.0f} MB; peak RSS {raw_rss:,.0f} MB)", flush=True)

    out, _, prep_rss = run([sys.executable, "-c", PREP, str(corpus), str(cache), str(a.threads)])
    prep_s, tokens = float(out.split()[0]), int(out.split()[1])
    size = dir_bytes(cache / "shards", "*.npy") / 1e6
    print(f"token cache:   {mb / prep_s:6.1f} MB/s  = {raw_s / prep_s:.2f}x raw  ({tokens:,} tokens, "
          f"peak RSS {prep_rss:,.0f} MB, cache {size:,.0f} MB)", flush=True)
    if tokens != raw_tokens and raw_files == n_files:
        print(f"  note: {tokens - raw_tokens:+,} tokens against raw tiktoken's 64K-character slices (cut mid-word)")

    out, _, warm_rss = run([sys.executable, "-c", PREP, str(corpus), str(cache), str(a.threads)])
    print(f"warm cache:    opened in {float(out.split()[0]):.2f} s (fingerprints + checks), peak RSS {warm_rss:,.0f} MB")

    run_dir = a.dir / f"run_{int(time.time())}"
    out, wall, train_rss = run([sys.executable, "train.py", "data=folder", f"data.path={corpus}",
                                f"data.cache_dir={cache}", "trainer.max_steps=20", f"hydra.run.dir={run_dir}",
                                "+callbacks.first_step._target_=first_step.FirstStep"])
    first = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("FIRST_STEP"))
    print(f"train 20 steps from the warm cache: first step after {first:.1f} s, all in {wall:.1f} s, "
          f"peak RSS {train_rss:,.0f} MB", flush=True)

    out, _, _ = run([sys.executable, "train.py", "trainer=ddp_cpu", "data=folder", f"data.path={corpus}",
                     f"data.cache_dir={cache}", "trainer.max_steps=20", f"hydra.run.dir={run_dir}_ddp",
                     "+callbacks.first_step._target_=first_step.FirstStep"])
    ranks = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("PEAK_RSS"))
    print("trainer=ddp_cpu, 20 steps from the warm cache: peak RSS " +
          ", ".join(f"process {rank} {mb} MB" for rank, mb in ranks), flush=True)

    proc = prep(corpus, resumed, a.threads)
    while len(list((resumed / "shards").glob("*.json"))) < n_files / 2 and proc.poll() is None:
        time.sleep(0.05)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list((resumed / "shards").glob("*.npy")))
    prep(corpus, resumed, a.threads).communicate()
    names = sorted(p.name for p in (cache / "shards").glob("*.npy"))
    same = names == sorted(p.name for p in (resumed / "shards").glob("*.npy")) and all(
        filecmp.cmp(cache / "shards" / n, resumed / "shards" / n, shallow=False) for n in names)
    print(f"kill at 50%: killed while running: {alive}, {kept}/{n_files} shards kept; "
          f"resumed shards byte-identical: {same}")
    if not a.keep:
        shutil.rmtree(a.dir)


if __name__ == "__main__":
    main()
