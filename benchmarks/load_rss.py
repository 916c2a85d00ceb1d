"""Peak memory of loading GPT-2 weights: python benchmarks/load_rss.py [--shape gpt2-medium] [--dir /tmp/x]

Writes a randomly initialised model of that GPT-2 shape in the Hugging Face layout (config.json + model.safetensors)
once, then loads it with gpt.pretrained.load_pretrained in a fresh process and reports that process's peak
resident memory (VmHWM in /proc/self/status; ru_maxrss would carry over the parent's peak across exec) against the
file's size. Linux only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SHAPES = {  # GPT-2's four sizes: (emb_dim, n_layers, n_heads)
    "gpt2": (768, 12, 12),
    "gpt2-medium": (1024, 24, 16),
    "gpt2-large": (1280, 36, 20),
    "gpt2-xl": (1600, 48, 25),
}


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def write(directory: Path, shape: str) -> None:
    import torch

    from gpt.model import GPTConfig, GPTModel
    from gpt.pretrained import export_hf

    emb_dim, n_layers, n_heads = SHAPES[shape]
    cfg = GPTConfig(vocab_size=50257, context_length=1024, emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers,
                    drop_rate=0.1, qkv_bias=True, tie_weights=True)
    with torch.no_grad():
        export_hf(GPTModel(cfg), {"name": "gpt2"}, 50256, directory)


def load(directory: Path) -> None:
    import time

    import torch  # noqa: F401  (imported before the baseline is taken)

    from gpt.pretrained import load_pretrained

    baseline = peak_rss_mib()
    start = time.perf_counter()
    model, _ = load_pretrained(directory)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    file_mib = (directory / "model.safetensors").stat().st_size / 2**20
    print(f"file:            {file_mib:,.0f} MiB ({model.num_parameters():,} parameters)")
    print(f"peak RSS:        {peak:,.0f} MiB   ratio to the file: {peak / file_mib:.2f}")
    print(f"  before load:   {baseline:,.0f} MiB (python + torch)")
    print(f"  added by load: {peak - baseline:,.0f} MiB   ratio to the file: {(peak - baseline) / file_mib:.2f}")
    print(f"load time:       {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="gpt2-medium")
    parser.add_argument("--dir", type=Path, default=Path(".cache/load_rss"))
    parser.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)  # the measured child process
    args = parser.parse_args()
    directory = args.dir / args.shape
    if args.load_only:
        return load(directory)
    if not (directory / "model.safetensors").is_file():
        print(f"writing a random {args.shape} to {directory} ...", flush=True)
        write(directory, args.shape)
    # A fresh process, so the peak measured is the loading's alone.
    cmd = [sys.executable, __file__, "--shape", args.shape, "--dir", str(args.dir), "--load-only"]
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
