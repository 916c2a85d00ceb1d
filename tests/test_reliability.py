"""Reliability: exact resume after SIGKILL, atomic checkpoints, a stop on NaN, one-line errors for bad input.

Most bad inputs are refused before Lightning is imported (a few seconds each); the resume test runs train.py
three times on a tiny model (about a minute)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from gpt.checkpoint import CheckpointError, atomic_save, read_checkpoint
from gpt.data.sources.kjv import kjv_text
from gpt.data.sampler import ResumableSampler
from gpt.model import GPTConfig, GPTModel
from gpt.optim import warmup_decay
from gpt.tokenizer import build_tokenizer

TINY = [
    "model.n_layers=2", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32", "model.drop_rate=0.1",
    "data.batch_size=8", "optim.warmup_steps=5", "tokenizer=simple_v2", "trainer.val_check_interval=10",
    "trainer.limit_val_batches=4", "sample.max_new_tokens=5", "checkpoint.every_n_steps=4",
]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(kjv_text()[:20_000], encoding="utf-8")  # ~15 batches an epoch with TINY
    return path


def data_args(corpus, tmp_path) -> list[str]:
    return ["data=text_file", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]


# ---------------------------------------------------------------- exact resume, for every task

# Fine-tuning from random weights with GPT-2's tokenizer (the fine-tuning sources are not text corpora).
FINETUNE = [
    "model.n_layers=2", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32", "model.drop_rate=0.1",
    "data.batch_size=4", "optim.warmup_steps=2", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
    "checkpoint.every_n_steps=4",
]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """A small labeled-text file (task=classify) and a small Alpaca file (task=instruct)."""
    tmp = tmp_path_factory.mktemp("labeled")
    spam = [f"spam\tWIN a FREE prize {i}! Call 0800 now" for i in range(20)]
    ham = [f"ham\tsee you at lunch on day {i}" for i in range(40)]
    (tmp / "texts.tsv").write_text("\n".join(spam + ham) + "\n", encoding="utf-8")
    records = [{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}."} for i in range(40)]
    (tmp / "records.json").write_text(json.dumps(records), encoding="utf-8")
    return tmp


def task_args(task: str, corpus, labeled, tmp_path) -> list[str]:
    if task == "pretrain":  # with Muon: its state and AdamW's, saved and restored as one optimizer
        return [*TINY, *data_args(corpus, tmp_path), "optim.name=muon"]
    if task == "classify":
        return [*FINETUNE, "task=classify", f"data.path={labeled / 'texts.tsv'}"]
    return [*FINETUNE, "task=instruct", f"data.path={labeled / 'records.json'}", "task.response_tokens=2"]


def final_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def logged_steps(run_dir, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of ``tag`` as logged by the last process that ran in ``run_dir``: its own event files
    (events.out.tfevents.<time>.<host>.<pid>.<n>; validate, fit and test each start one)."""
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    pid = files[-1].name.split(".")[-2]
    logged = []
    for path in files:
        acc = EventAccumulator(str(path)).Reload()
        if path.name.split(".")[-2] == pid and tag in acc.Tags()["scalars"]:
            logged += [(e.step, e.value) for e in acc.Scalars(tag)]
    return logged


def kill_after_second_checkpoint(cmd: list[str], run_dir) -> int:
    """Starts ``cmd``, SIGKILLs it soon after its second last.ckpt lands; returns the step that checkpoint holds."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    while proc.poll() is None and not last.exists():
        time.sleep(0.02)
    first = last.stat().st_mtime_ns
    while proc.poll() is None and last.stat().st_mtime_ns == first:
        time.sleep(0.02)
    time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return final_state(run_dir)["global_step"]


@pytest.mark.parametrize("task,steps", [("pretrain", 40), ("classify", 16), ("instruct", 16)])
def test_sigkill_mid_run_then_resume_is_bit_identical(task, steps, corpus, labeled, tmp_path):
    common = [f"trainer.max_steps={steps}", "ckpt_path=last", "trainer.log_every_n_steps=1"]
    ref_args = [*task_args(task, corpus, labeled, tmp_path / "ref"), *common, f"hydra.run.dir={tmp_path / 'ref'}"]
    ref = subprocess.Popen([sys.executable, "train.py", *ref_args], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # alongside the killed run, with its own token cache
    run_dir = tmp_path / "killed"
    args = [*task_args(task, corpus, labeled, tmp_path), *common, f"hydra.run.dir={run_dir}"]
    killed_at = kill_after_second_checkpoint([sys.executable, "train.py", *args], run_dir)
    assert 0 < killed_at < steps
    resumed = run("train.py", *args)  # the same command: auto-resume
    ref_out, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0 and resumed.returncode == 0, ref_err[-2000:] + resumed.stderr[-2000:]

    # The resumed process trained only the steps after its checkpoint, and logged what the reference logged there.
    ref_log, resumed_log = logged_steps(tmp_path / "ref"), logged_steps(run_dir)
    assert [s for s, _ in ref_log] == list(range(steps))
    assert [s for s, _ in resumed_log] == list(range(killed_at, steps))
    assert resumed_log == ref_log[killed_at:]
    a, b = final_state(tmp_path / "ref"), final_state(run_dir)
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    val = [line for line in ref_out.splitlines() if line.startswith("val/loss:")]
    assert val and val == [line for line in resumed.stdout.splitlines() if line.startswith("val/loss:")]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and list((run_dir / ".hydra").glob("resume-*"))


# ---------------------------------------------------------------- resume refuses drift


def test_resume_refuses_changed_settings_or_data_and_applies_allowed_ones(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(kjv_text()[:20_000], encoding="utf-8")
    run_dir = tmp_path / "run"
    common = [*TINY, *data_args(corpus, tmp_path), "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    assert run("train.py", *common, "trainer.max_steps=8").returncode == 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    changed = run("train.py", *common, "trainer.max_steps=16", "optim.lr=2e-3", "data.batch_size=4", "seed=7")
    refused(changed, f"checkpoint {ckpt} was trained with other settings: data.batch_size=8 there, 4 here; "
                     "optim.lr=0.001 there, 0.002 here; seed=42 there, 7 here; ")
    assert "resume.allow=[data.batch_size,optim.lr,seed]" in changed.stderr
    lines = kjv_text()[:20_000].splitlines()
    corpus.write_text("\n".join(reversed(lines)), encoding="utf-8")  # same path and words (vocabulary), other text
    refused(run("train.py", *common, "trainer.max_steps=16", f"data.cache_dir={tmp_path / 'cache2'}"),
            "data.content=")
    corpus.write_text(kjv_text()[:20_000], encoding="utf-8")
    assert final_state(run_dir)["global_step"] == 8  # nothing trained by the refused runs

    # Allowed: the new lr takes effect from the first resumed step. The rule for a longer max_steps: the schedule
    # is the one a run planned for the new total from the start would follow (README, Reliability).
    resumed = run("train.py", *common, "trainer.max_steps=16", "optim.lr=2e-3", "resume.allow=[optim.lr]",
                  "trainer.log_every_n_steps=1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lr = logged_steps(run_dir, "train/lr")
    assert [s for s, _ in lr] == list(range(8, 16))
    assert [v for _, v in lr] == pytest.approx([2e-3 * warmup_decay(s, 5, 16, 0.1) for s in range(8, 16)], rel=1e-6)
    state = final_state(run_dir)
    assert state["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 2e-3
    assert state["run_identity"]["optim.lr"] == 2e-3  # the next resume compares with the new value


def test_sampler_skips_what_was_trained_and_rebuilds_any_epoch():
    s = ResumableSampler(10, seed=3)
    s.set_epoch(2)
    epoch2 = list(s)
    assert sorted(epoch2) == list(range(10)) and epoch2 == list(s)  # a permutation, the same each time
    s.set_epoch(3)
    assert list(s) != epoch2
    fresh = ResumableSampler(10, seed=3)
    fresh.resume(2, skip=4)
    assert list(fresh) == epoch2[4:] and list(fresh) == epoch2  # the skip applies once
    ranks = [list(ResumableSampler(9, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and set(ranks[0] + ranks[1]) == set(range(9))


def test_a_nan_loss_stops_training_before_its_update_and_its_checkpoint(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from gpt.training.callbacks import NonFiniteGuard, NonFiniteLossError
    from gpt.training.module import TaskModule

    tok = build_tokenizer("simple_v2", "a b c")
    model = dict(vocab_size=5, context_length=4, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False,
                 tie_weights=True)
    optim = dict(name="adamw", lr=1e-2, weight_decay=0.1, betas=[0.9, 0.95], warmup_steps=1, min_lr_ratio=0.1,
                 decay="cosine", muon_lr_scale=1.0)
    module = TaskModule(model, optim, tok.to_config(), task={"name": "pretrain"})
    forwards = 0

    def nan_at_the_fourth_forward(module, args, out):  # the second micro-batch of optimizer step 1
        nonlocal forwards
        forwards += 1
        return out * float("nan") if forwards == 4 else out

    module.model.register_forward_hook(nan_at_the_fourth_forward)
    ids = torch.randint(0, 5, (8, 4))
    trainer = L.Trainer(accelerator="cpu", max_steps=3, accumulate_grad_batches=2, gradient_clip_val=1.0,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[NonFiniteGuard(), ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)])
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at step 1"):
        trainer.fit(module, DataLoader(TensorDataset(ids, ids), batch_size=1))
    assert trainer.global_step == 1  # step 1's update never ran
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert [p.name for p in tmp_path.iterdir()] == ["epoch=0-step=1.ckpt"]  # only the good step was saved


@pytest.mark.parametrize("task", ["classify", "instruct"])
def test_fine_tuning_stops_on_a_nan_loss_in_one_line(task, labeled, tmp_path):
    run_dir = tmp_path / "run"
    proc = run("train.py", *task_args(task, None, labeled, tmp_path), "optim.lr=1e4", "trainer.max_steps=30",
               f"hydra.run.dir={run_dir}")
    refused(proc, "train/loss is nan at step ")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert not last.exists() or all(torch.isfinite(t).all() for t in final_state(run_dir)["state_dict"].values())


# ---------------------------------------------------------------- atomic checkpoints


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_save({"version": torch.tensor(-1)}, target)
    writer = (
        "import sys, torch\nfrom gpt.checkpoint import atomic_save\nprint('ready', flush=True)\n"
        "for i in range(10**6):\n"
        "    atomic_save({'version': torch.tensor(i), 'w': torch.full((4_000_000,), float(i))}, sys.argv[1])\n"
    )
    versions, interrupted = [], 0
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(target)], cwd=ROOT, stdout=subprocess.PIPE)
        proc.stdout.readline()
        tmp = tmp_path / f".last.ckpt.{proc.pid}.tmp"  # exists only while atomic_save writes
        seen = read_checkpoint(target)["version"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and read_checkpoint(target)["version"] == seen:  # one version lands
            time.sleep(0.01)
        while time.monotonic() < deadline and not tmp.exists():  # then the next write starts
            time.sleep(0.001)
        assert proc.poll() is None, "the writer ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += tmp.exists()  # left behind: the kill landed mid-write
        ckpt = read_checkpoint(target)  # whole, never half-written
        assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["version"])))
        versions.append(int(ckpt["version"]))
    assert all(v >= 0 for v in versions), versions  # each writer landed at least one newer version
    assert interrupted >= 1, "no kill landed during a write"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".ckpt"] == ["last.ckpt"]


def test_train_py_writes_every_checkpoint_through_the_atomic_writer(corpus, tmp_path):
    """train.py run in a process where AtomicCheckpointIO records each file it saves."""
    run_dir, record = tmp_path / "run", tmp_path / "saved.txt"
    probe = (
        "import runpy, sys\nfrom gpt.training.checkpoint_io import AtomicCheckpointIO\n"
        "save = AtomicCheckpointIO.save_checkpoint\n"
        "def recording(self, checkpoint, path, storage_options=None):\n"
        f"    open({str(record)!r}, 'a').write(str(path) + '\\n')\n"
        "    save(self, checkpoint, path, storage_options)\n"
        "AtomicCheckpointIO.save_checkpoint = recording\n"
        "sys.argv = sys.argv[1:]\nrunpy.run_path('train.py', run_name='__main__')\n"
    )
    args = [*TINY, *data_args(corpus, tmp_path), "trainer.max_steps=8", "trainer.val_check_interval=4",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-c", probe, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = {Path(p).name for p in record.read_text().split()}
    assert written == {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")} == {"best.ckpt", "last.ckpt"}


def test_a_truncated_checkpoint_is_refused_naming_it_and_the_last_good_one(tmp_path):
    good, bad = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    atomic_save({"w": torch.ones(1000)}, good)
    bad.write_bytes(good.read_bytes()[:500])
    message = f"checkpoint {bad} is damaged: truncated or corrupt .*the last good .* is {good}"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(bad)


def test_a_checkpoint_that_cannot_be_read_names_the_real_cause(tmp_path, monkeypatch):
    good = tmp_path / "last.ckpt"
    atomic_save({"w": torch.ones(3)}, good)
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nope.ckpt'} does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is not a file"):
        read_checkpoint(tmp_path)
    if not torch.cuda.is_available():
        message = f"cannot load checkpoint {good}: device=cuda asks for a CUDA GPU and this machine has none"
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(good, map_location="cuda")
    real_open = Path.open

    def denied(self, *args, **kwargs):  # chmod cannot deny root, who runs these tests in CI containers
        if self == good:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {good}: Permission denied") as e:
        read_checkpoint(good)
    assert "truncated" not in str(e.value) and "last good" not in str(e.value)


# ---------------------------------------------------------------- bad input: one line, exit 1, nothing written


def refused(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()  # Lightning's own INFO lines may come first
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], proc.stderr[-2000:]
    assert message in lines[-1] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def bad_files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"GIF89a\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "short.txt").write_text("In the beginning", encoding="utf-8")
    (tmp_path / "a_file").write_text("x", encoding="utf-8")


BAD_TRAIN = {
    "unknown model": (["model=gpt5"], "unknown model config 'gpt5'; choose one of: gpt2-large"),
    "unknown tokenizer": (["tokenizer=bpe9"], "unknown tokenizer config 'bpe9'; choose one of: bpe, char, gpt2, simple_v1"),
    "unknown data": (["data=web"], "unknown data config 'web'; choose one of: folder, hf, instruction, jsonl, kjv, labeled_text, sms_spam, text_file"),
    "unknown trainer": (["trainer=tpu"], "unknown trainer config 'tpu'; choose one of: cpu, ddp, ddp_cpu, fsdp, gpu"),
    "emb_dim % n_heads": (["model.emb_dim=30", "model.n_heads=4"], "model.emb_dim=30 is not divisible by model.n_heads=4"),
    "max_length > context": (["data.max_length=999"], "data.max_length=999 is longer than model.context_length=32"),
    # a 10^6 x 10^6 causal mask per layer: refused before it is allocated, on any host
    "context beyond memory": (["model.context_length=1000000"], "with model.context_length=1000000 needs"),
    "stride": (["data.stride=0"], "data.stride must be positive, got 0"),
    "batch_size": (["data.batch_size=-2"], "data.batch_size must be positive, got -2"),
    "max_steps": (["trainer.max_steps=0"], "trainer.max_steps must be positive, got 0"),
    "unknown optimizer": (["optim.name=sgd"], "optim.name must be adamw or muon, got 'sgd'"),
    "unknown decay": (["optim.decay=step"], "optim.decay must be cosine or linear, got 'step'"),
    "muon under fsdp": (["optim.name=muon", "trainer=fsdp"], "which FSDP splits across GPUs; use trainer=ddp"),
    "missing corpus": (["data=text_file", "data.path={tmp}/nope.txt"], "corpus file {tmp}/nope.txt does not exist"),
    "empty corpus": (["data=text_file", "data.path={tmp}/empty.txt"], "corpus file {tmp}/empty.txt is empty"),
    "binary corpus": (["data=text_file", "data.path={tmp}/binary.txt"], "{tmp}/binary.txt is binary"),
    "non-UTF-8 corpus": (["data=text_file", "data.path={tmp}/latin1.txt"], "{tmp}/latin1.txt is not UTF-8"),
    "missing checkpoint": (["ckpt_path={tmp}/nope.ckpt"], "checkpoint {tmp}/nope.ckpt does not exist"),
    "unwritable output": (["hydra.run.dir={tmp}/a_file/run"], "cannot write the run directory {tmp}/a_file/run"),
}


# train.py and gpt/data.py still raise ValueError for these; only gpt.errors.UserError is one line now. The lead
# converts those raises while refactoring train.py; these cases then pass and their mark must go (strict).
@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_train_refuses_bad_input_in_one_line_and_writes_nothing(case, corpus, tmp_path):
    bad_files(tmp_path)
    args, message = BAD_TRAIN[case]
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("data=") for a in args):
        args = [*data_args(corpus, tmp_path), *args]
    run_dir = tmp_path / "outputs" / "run"
    proc = run("train.py", *TINY, f"hydra.run.dir={run_dir}", *args)
    refused(proc, message.format(tmp=tmp_path))
    assert not (tmp_path / "outputs").exists()


def test_train_refuses_a_checkpoint_of_another_shape_naming_the_fields(corpus, tmp_path):
    ckpt = tmp_path / "other.ckpt"
    shape = dict(vocab_size=99, context_length=32, emb_dim=64, n_heads=2, n_layers=3, drop_rate=0.1,
                 qkv_bias=False, tie_weights=True)
    atomic_save({"hyper_parameters": {"model": shape}}, ckpt)
    run_dir = tmp_path / "run"
    proc = run("train.py", *TINY, *data_args(corpus, tmp_path), f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}")
    refused(proc, f"checkpoint {ckpt} holds a different model shape: ")
    assert "model.emb_dim=64 there, 32 here" in proc.stderr and "model.n_layers=3 there, 2 here" in proc.stderr
    assert not run_dir.exists()


def test_train_refuses_a_corpus_shorter_than_one_window(tmp_path):
    bad_files(tmp_path)
    run_dir = tmp_path / "run"
    proc = run("train.py", *TINY, *data_args(tmp_path / "short.txt", tmp_path), f"hydra.run.dir={run_dir}")
    refused(proc, "fewer than one window of data.max_length=32 + 1")
    assert not run_dir.exists()


def test_an_existing_run_directory_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("original", encoding="utf-8")
    proc = run("train.py", *TINY, f"hydra.run.dir={run_dir}")
    refused(proc, f"run directory {run_dir} already exists; choose a new hydra.run.dir, or continue the run in it "
                  "with ckpt_path=last")
    assert [p.name for p in run_dir.rglob("*")] == [".hydra", "config.yaml"]
    assert (run_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8") == "original"


def test_debug_flag_shows_the_full_traceback(tmp_path):
    proc = run("train.py", "model=gpt5", f"hydra.run.dir={tmp_path / 'run'}", "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "Available options in 'model'" in proc.stderr


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint in train.py's layout (untrained weights), enough for generate.py's checks."""
    tok = build_tokenizer("simple_v2", kjv_text()[:20_000])  # a vocabulary larger than generate's default top_k
    cfg = GPTConfig(vocab_size=tok.n_vocab, context_length=16, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0,
                    qkv_bias=False, tie_weights=True)
    state = {f"model.{k}": v for k, v in GPTModel(cfg).state_dict().items()}
    path = tmp_path_factory.mktemp("gen") / "tiny.ckpt"
    atomic_save({"hyper_parameters": {"model": cfg.to_dict(), "tokenizer": tok.to_config()}, "state_dict": state}, path)
    return path, tok.n_vocab


BAD_GENERATE = {
    "empty prompt": (["prompt="], "prompt is empty"),
    "negative max_new_tokens": (["max_new_tokens=-1"], "max_new_tokens must be >= 0, got -1"),
    "negative temperature": (["temperature=-0.5"], "temperature must be >= 0 (0 = greedy), got -0.5"),
    "top_k 0": (["top_k=0"], "top_k must be in 1..{vocab} (the vocabulary size) or null, got 0"),
    "top_k > vocab": (["top_k=100000"], "top_k must be in 1..{vocab} (the vocabulary size) or null, got 100000"),
    "top_p 0": (["top_p=0"], "top_p must be in (0, 1] or null, got 0"),
    "missing checkpoint": (["ckpt={tmp}/nope.ckpt"], "checkpoint {tmp}/nope.ckpt does not exist"),
    "truncated checkpoint": (["ckpt={tmp}/cut.ckpt"], "checkpoint {tmp}/cut.ckpt is damaged: truncated or corrupt"),
    "prompt read as a number": (["prompt=2024"], "prompt=2024 was read as a int, not text; quote it: 'prompt=\"2024\"'"),
    "temperature nan": (["temperature=nan"], "temperature must be >= 0 (0 = greedy), got nan"),
    "top_k not an integer": (["top_k=2.5"], "top_k must be in 1..{vocab} (the vocabulary size) or null, got 2.5"),
    "device it lacks": (["device=cuda:7"], "device=cuda:7 asks for a CUDA GPU"),
}


@pytest.mark.parametrize("case", BAD_GENERATE)
def test_generate_refuses_bad_input_in_one_line(case, tiny_checkpoint, tmp_path):
    ckpt, vocab = tiny_checkpoint
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    args, message = BAD_GENERATE[case]
    proc = run("generate.py", f"ckpt={ckpt}", "prompt=And God", *(a.format(tmp=tmp_path) for a in args))
    refused(proc, message.format(tmp=tmp_path, vocab=vocab))
    assert proc.stdout == ""  # not even the prompt was echoed


def test_chat_reads_a_line_that_is_not_utf8_with_replacement_characters(tiny_checkpoint, tmp_path):
    saved = torch.load(tiny_checkpoint[0], weights_only=True)
    saved["hyper_parameters"]["task"] = {"name": "instruct"}  # chat=true takes an instruction-tuned model
    ckpt = tmp_path / "instruct.ckpt"
    atomic_save(saved, ckpt)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # as in a UTF-8 locale; the C locale would escape
    proc = subprocess.run([sys.executable, "generate.py", f"ckpt={ckpt}", "chat=true", "max_new_tokens=2"], cwd=ROOT,
                          input=b"caf\xe9 au lait\nAnd God said\n/exit\n", capture_output=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().count("assistant> ") == 2 and proc.stdout.decode().endswith("bye\n")
