"""gpt/cli.py: run directories that are never shared and never taken from another run, one-line errors only for the
user's mistakes, and a traceback that is kept for bugs. In-process tests of the rules, then real train.py runs."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.utils import setup_globals
from omegaconf import OmegaConf

from conftest import ROOT
from gpt import cli
from gpt.cli import RunDirGuard, remove_refused_run_dir
from gpt.data.sources.kjv import kjv_text
from gpt.tasks import load_trained

TINY = [
    "model.n_layers=1", "model.emb_dim=16", "model.n_heads=2", "model.context_length=16", "tokenizer=simple_v2",
    "data.batch_size=4", "trainer.val_check_interval=5", "trainer.limit_val_batches=1", "sample.max_new_tokens=2",
    "checkpoint.every_n_steps=5", "trainer.max_steps=5",
]


@pytest.fixture(autouse=True)
def fresh_guard():
    setup_globals()  # the ${now:...} resolver, as Hydra registers it before composing
    RunDirGuard.created = None
    yield
    RunDirGuard.created = None


def guard(run_dir: str, ckpt_path: str | None = None) -> Path:
    """What RunDirGuard picks for ``hydra.run.dir=run_dir``, as Hydra then sees it."""
    config = OmegaConf.create({"hydra": {"run": {"dir": run_dir}}, "ckpt_path": ckpt_path})
    RunDirGuard().on_run_start(config)
    return Path(config.hydra.run.dir)


# ---------------------------------------------------------------- the rules, in process


def test_a_taken_time_stamped_directory_gets_the_next_free_suffix(tmp_path):
    stamped = f"{tmp_path}/outputs/${{now:%Y}}"
    year = time.strftime("%Y")
    first = guard(stamped)
    (first / "train.log").write_text("running", encoding="utf-8")  # the first run is under way
    second, third = guard(stamped), guard(stamped)
    assert [first.name, second.name, third.name] == [year, f"{year}-1", f"{year}-2"]
    assert all(p.is_dir() for p in (first, second, third))
    assert (first / "train.log").read_text(encoding="utf-8") == "running"
    assert RunDirGuard.created == (third, [])  # outputs/ was made by the first call, not this one


def test_an_empty_time_stamped_directory_made_by_another_run_is_not_shared(tmp_path):
    (tmp_path / "run2020").mkdir()  # another run made it a moment ago and has not written yet
    assert guard(f"{tmp_path}/${{now:run2020}}") == tmp_path / "run2020-1"


def test_a_directory_named_outright_that_holds_a_run_is_refused_unless_resuming(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        guard(str(run_dir))
    assert f"run directory {run_dir} already exists" in capsys.readouterr().err
    assert guard(str(run_dir), ckpt_path="last") == run_dir and RunDirGuard.created is None  # resumed, not owned


def test_a_refused_run_removes_its_directory_and_the_parents_it_made(tmp_path):
    run_dir = guard(f"{tmp_path}/outputs/day/${{now:%H}}")
    assert RunDirGuard.created == (run_dir, [tmp_path / "outputs" / "day", tmp_path / "outputs"])
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("x", encoding="utf-8")
    (run_dir / "train.log").write_text("log", encoding="utf-8")
    remove_refused_run_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_leaves_a_run_started_beside_it_whole(tmp_path):
    run_dir = guard(f"{tmp_path}/outputs/day/${{now:%H}}")  # made outputs/ and outputs/day/
    other = tmp_path / "outputs" / "day" / "other-run" / "checkpoints"  # another run, started after it
    other.mkdir(parents=True)
    (other / "last.ckpt").write_bytes(b"weights")
    remove_refused_run_dir()
    assert not run_dir.exists()
    assert (other / "last.ckpt").read_bytes() == b"weights"


def test_a_run_directory_with_results_in_it_is_kept(tmp_path):
    run_dir = guard(f"{tmp_path}/${{now:%H}}")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events").write_bytes(b"1")
    remove_refused_run_dir()
    assert (run_dir / "tensorboard" / "events").is_file()


def test_an_empty_directory_named_outright_is_used_but_never_removed(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    assert guard(str(run_dir)) == run_dir and RunDirGuard.created is None
    remove_refused_run_dir()
    assert run_dir.is_dir()


# ---------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(kjv_text()[:6_000], encoding="utf-8")
    return path


def start(cwd: Path, *args: str, code: str | None = None) -> subprocess.Popen:
    """train.py started from ``cwd`` (where its default outputs/ goes); ``code`` runs first, in the same process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    prefix = ["-c", f"{code}\nimport runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
              "run_name='__main__')"] if code else []
    return subprocess.Popen([sys.executable, *prefix, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def test_two_runs_started_in_the_same_second_get_two_directories(corpus, tmp_path):
    # ${now:%Y} makes the clash certain: both runs start in the same year, as two runs of the default
    # outputs/<date>/<time> started in the same second do.
    args = [*TINY, "data=text_file", f"data.path={corpus}", "hydra.run.dir=outputs/${now:%Y}"]
    runs = [start(tmp_path, *args, f"data.cache_dir={tmp_path / f'cache{i}'}") for i in range(2)]
    for rc, out, err in map(finish, runs):
        assert rc == 0, err[-2000:]
    year = time.strftime("%Y")
    dirs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert dirs == [year, f"{year}-1"]
    for name in dirs:
        model, _, _ = load_trained(tmp_path / "outputs" / name)
        assert model.cfg.emb_dim == 16
        assert len(list((tmp_path / "outputs" / name / ".hydra").glob("*.yaml"))) == 3  # one run's record each


def test_a_refused_run_started_beside_a_training_run_leaves_it_whole(corpus, tmp_path):
    # The refused run starts first, so it is the one that creates outputs/ and outputs/<date>/; it is refused
    # (the corpus is missing) only after Lightning has loaded, while the training run is writing beside it.
    refused = start(tmp_path, *TINY, "data=text_file", f"data.path={tmp_path / 'missing.txt'}")
    while refused.poll() is None and not (tmp_path / "outputs").exists():
        time.sleep(0.05)
    training = start(tmp_path, *TINY, "data=text_file", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}")
    rc, _, err = finish(refused)
    missing = f"error: corpus file {tmp_path / 'missing.txt'} does not exist; set data.path to a UTF-8 text file"
    assert rc == 1 and err.strip().splitlines()[-1] == missing, err[-2000:]
    rc, _, err = finish(training)
    assert rc == 0, err[-2000:]
    (day,) = (tmp_path / "outputs").iterdir()
    (run_dir,) = day.iterdir()  # the training run's, and nothing of the refused one
    model, _, _ = load_trained(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


def test_a_bug_shows_its_traceback_keeps_the_run_directory_and_its_log(corpus, tmp_path):
    bug = "import gpt.data.sources.text_file as t\ndef broken(*a): raise RuntimeError('boom')\nt.TextFile.documents = broken"
    run_dir = tmp_path / "run"
    rc, _, err = finish(start(tmp_path, *TINY, "data=text_file", f"data.path={corpus}", f"hydra.run.dir={run_dir}",
                              code=bug))
    assert rc == 1
    assert "Traceback" in err and "RuntimeError: boom" in err
    assert err.strip().splitlines()[-1] == f"error: {cli.REPORT}; the run directory {run_dir} and its log are kept"
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "RuntimeError: boom" in log and "Traceback" in log
