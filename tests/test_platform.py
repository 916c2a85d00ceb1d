"""The research platform: plug-ins added from outside the project (README, "Extending"), debug configs, loggers
and callbacks switched from the command line. End to end through train.py, as a user runs it."""

import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from gpt.data.sources.kjv import kjv_text
from test_entrypoints import TINY, scalars

PLUGINS = ROOT / "tests" / "plugins"


def train(*args: str, cwd=ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """train.py with the test-only plug-ins importable and their YAML files on Hydra's search path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.searchpath=[file://{PLUGINS / 'conf'}]",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("platform")
    path = tmp / "corpus.txt"
    path.write_text(kjv_text()[:40_000], encoding="utf-8")
    return ["data=text_file", f"data.path={path}", f"data.cache_dir={tmp / 'cache'}"]


def test_a_new_attention_variant_from_one_file_trains_and_samples(corpus, tmp_path):
    run_dir = tmp_path / "run"
    train("model=tiny_local", *TINY, *corpus, "trainer.max_steps=20", f"hydra.run.dir={run_dir}")
    val = scalars(run_dir, "val/loss")
    assert val[-1][1] < val[0][1]
    env = {**os.environ, "PYTHONPATH": str(PLUGINS.parent)}
    out = subprocess.run([sys.executable, "generate.py", f"ckpt={run_dir}", "prompt=And God", "max_new_tokens=5",
                          "temperature=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("And God") and len(out.stdout.strip()) > len("And God")


def test_the_local_attention_variant_sees_only_its_window(monkeypatch):
    from gpt.model import GPTConfig, GPTModel

    monkeypatch.syspath_prepend(str(PLUGINS.parent))
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50, context_length=32, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0,
                               qkv_bias=False, tie_weights=True, attn_impl="plugins.local_attention.LocalAttention"))
    x = torch.randint(0, 50, (1, 32))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 50  # change the first token: only the next 16 positions can see it
    changed = (model(x) - model(y)).abs().amax(-1)[0]
    assert (changed[:16] > 0).all() and (changed[16:] == 0).all()


def test_a_new_text_source_from_one_file_trains(tmp_path):
    run_dir = tmp_path / "run"
    out = train(*TINY, "data=python_files", "data.package=json", f"data.cache_dir={tmp_path / 'cache'}",
                "trainer.max_steps=20", f"hydra.run.dir={run_dir}").stdout
    val = scalars(run_dir, "val/loss")
    assert len(val) == 2 and val[-1][1] < val[0][1]  # it learned something from the json package's source
    assert "sample: 'And God said" in out


def test_a_new_task_from_one_file_trains_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    out = train(*TINY, "task=sort", "task.examples=400", "trainer.max_steps=30", f"hydra.run.dir={run_dir}").stdout
    assert "test exact match:" in out and "of 40" in out  # the test split: the second tenth of 400 examples
    val = scalars(run_dir, "val/loss")
    assert val[-1][1] < val[0][1]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["task"]["_target_"] == "plugins.sort_task.SortDigits"


def test_debug_fast_runs_one_batch_of_each_stage_and_writes_nothing(corpus, tmp_path):
    proc = train(*TINY, *corpus, "debug=fast", cwd=tmp_path)
    assert "fast_dev_run" in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory, no checkpoint, no log


def test_debug_overfit_drives_one_batch_to_a_near_zero_loss(corpus, tmp_path):
    run_dir = tmp_path / "run"
    shape = [o for o in TINY if o.startswith("model.")]  # the debug config's own trainer and optimizer settings
    train(*shape, "model.emb_dim=64", *corpus, "debug=overfit", f"hydra.run.dir={run_dir}")
    losses = [v for _, v in scalars(run_dir, "train/loss")]
    assert losses[0] > 8 and losses[-1] < 0.3


def test_debug_profile_writes_a_trace(corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(*TINY, *corpus, "debug=profile", "trainer.max_steps=4", "trainer.val_check_interval=2",
                f"hydra.run.dir={run_dir}")
    traces = list((run_dir / "tensorboard").rglob("*.pt.trace.json"))
    assert traces and traces[0].stat().st_size > 1000
    summary = (run_dir / "tensorboard" / "fit-profile.txt").read_text()  # the slowest operations, as a table
    assert "Self CPU time total" in summary and "aten::" in summary


def test_debug_anomaly_turns_on_anomaly_detection(corpus):
    job = train(*corpus, "debug=anomaly", "--cfg", "job").stdout
    assert "detect_anomaly: true" in job


def test_loggers_and_callbacks_switch_from_the_command_line(corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(*TINY, *corpus, "logger=[tensorboard,csv]", "callbacks.samples=null", "callbacks.best_checkpoint=null",
          "trainer.max_steps=10", f"hydra.run.dir={run_dir}")
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "train/tokens_per_sec"} <= set(header)
    tags = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()
    assert "val/loss" in tags["scalars"] and not [t for t in tags["tensors"] if "sample" in t]  # no samples
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no best.ckpt
