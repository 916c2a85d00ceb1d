"""End to end through the real Hydra entry points, as a user runs them (subprocesses)."""

import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from gpt.data.sources.kjv import kjv_text

TINY = [
    "model.n_layers=2", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32",
    "data.batch_size=8", "optim.lr=3e-3", "optim.warmup_steps=5",
    "trainer.val_check_interval=10", "trainer.limit_val_batches=4", "trainer.log_every_n_steps=5",
    "sample.max_new_tokens=5", "checkpoint.every_n_steps=10",
    "trainer.precision=32-true",  # the same numbers on every host (precision=auto picks bf16 where the CPU has it)
]


def run(script: str, *args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, input=input_text, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny pretraining run on the start of the built-in corpus: 30 steps, validated every 10."""
    tmp = tmp_path_factory.mktemp("e2e")
    corpus = tmp / "corpus.txt"
    corpus.write_text(kjv_text()[:60_000], encoding="utf-8")
    common = [*TINY, "data=text_file", f"data.path={corpus}", f"data.cache_dir={tmp / 'cache'}"]
    run_dir = tmp / "run"
    proc = run("train.py", *common, "trainer.max_steps=30", f"hydra.run.dir={run_dir}")
    return tmp, run_dir, common, proc


def test_training_lowers_val_loss_and_writes_logs_and_checkpoints(trained):
    _, run_dir, _, proc = trained
    val = scalars(run_dir, "val/loss")
    # Lightning logs against the index of the last optimizer step taken: 10 steps done -> step 9.
    assert [step for step, _ in val] == [9, 19, 29]
    assert val[-1][1] < val[0][1] - 0.3
    tags = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()
    for tag in ("train/loss", "val/perplexity", "train/lr", "train/tokens_per_sec", "train/tokens_seen"):
        assert tag in tags["scalars"], tag
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "parameters" in proc.stdout and f"python generate.py ckpt={run_dir}" in proc.stdout


def test_tokens_seen_counts_every_trained_token(trained):
    _, run_dir, _, _ = trained
    step, seen = scalars(run_dir, "train/tokens_seen")[-1]
    assert seen == (step + 1) * 8 * 32  # logged after step `step` was taken: step + 1 batches of 8 x 32 tokens


def test_generate_continues_the_prompt_from_a_run_directory(trained):
    _, run_dir, _, _ = trained
    out = run("generate.py", f"ckpt={run_dir}", "prompt=And God said", "max_new_tokens=8", "temperature=0").stdout
    assert out.startswith("And God said") and len(out.strip()) > len("And God said")
    again = run("generate.py", f"ckpt={run_dir}", "prompt=And God said", "max_new_tokens=8", "temperature=0").stdout
    assert again == out  # greedy is deterministic


def test_generate_refuses_bad_settings_in_one_line(trained):
    _, run_dir, _, _ = trained
    proc = run("generate.py", f"ckpt={run_dir}", "prompt=Hi", "top_p=1.5", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: top_p must be in (0, 1] or null, got 1.5"


def test_generate_in_int8_reports_its_weight_bytes_and_refuses_unknown_dtypes(trained):
    _, run_dir, _, _ = trained
    args = ("generate.py", f"ckpt={run_dir}", "prompt=And God said", "max_new_tokens=8", "temperature=0")
    fp32, int8 = run(*args), run(*args, "dtype=int8")
    assert int8.stdout.startswith("And God said") and len(int8.stdout.strip()) > len("And God said")
    size = {p: float(proc.stderr.split("[model: ")[1].split(" MB")[0]) for p, proc in (("fp32", fp32), ("int8", int8))}
    # This tiny model is mostly its tied 50,257 x 32 embedding, kept in fp32; int8 adds the head's int8 copy.
    assert size["fp32"] < size["int8"] < 1.3 * size["fp32"]
    proc = run(*args, "dtype=fp16", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: dtype must be one of fp32, bf16, int8, got 'fp16'"


def test_resume_continues_the_global_step(trained):
    tmp, run_dir, common, _ = trained
    resumed = tmp / "resumed"
    run("train.py", *common, "trainer.max_steps=40", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={resumed}")
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 40
    assert [step for step, _ in scalars(resumed, "val/loss")] == [39]
    assert min(step for step, _ in scalars(resumed, "train/loss")) >= 30


def test_bpe_budget_run_ends_on_time_and_its_checkpoint_alone_generates_and_evaluates(tmp_path):
    """tokenizer=bpe with budget_s: the run stops on its clock (no max_steps), its learning rate has decayed to the
    floor, and generate.py / evaluate.py work from the checkpoint once the tokenizer's cache is gone."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(kjv_text()[:60_000], encoding="utf-8")
    run_dir, tokenizer_cache = tmp_path / "run", tmp_path / "tokenizers"
    run("train.py", *TINY, "data=text_file", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
        "tokenizer=bpe", "tokenizer.vocab_size=300", f"tokenizer.cache_dir={tokenizer_cache}", "budget_s=12",
        "logger=none", f"hydra.run.dir={run_dir}")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    # last.ckpt holds the run's end, not its last every-N-steps save: the budget spent, the rate at its floor
    assert saved["time_budget"]["progress"] >= 0.99
    assert saved["lr_schedulers"][0]["_last_lr"][0] <= 3e-3 * 0.1 * 1.01  # optim.lr=3e-3 decays to x min_lr_ratio
    assert saved["hyper_parameters"]["tokenizer"]["name"] == "bpe"

    for path in tokenizer_cache.iterdir():
        path.unlink()
    out = run("generate.py", f"ckpt={ckpt}", "prompt=And God said", "max_new_tokens=8", "temperature=0").stdout
    assert out.startswith("And God said") and len(out.strip()) > len("And God said")
    evaluated = run("evaluate.py", f"ckpt={ckpt}", f"data.path={corpus}").stdout
    assert "bits per character:" in evaluated
