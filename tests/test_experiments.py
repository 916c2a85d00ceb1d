"""The named recipes in conf/experiment/ compose with the root config and set what their comments promise.
(Their measured figures come from full runs: benchmarks/spam_recipe.py, and each YAML file's header.)"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gpt.training.recipe import fill_auto
from gpt.training.setup import check_config

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="config", overrides=list(overrides))


def test_every_task_has_a_recipe():
    assert {"spam", "kjv_small", "instruct"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_is_global_and_valid(name):
    """Each recipe sets root keys (not keys under experiment.*) and passes train.py's config checks."""
    assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")
    cfg = composed(f"experiment={name}", *(["budget_s=60"] if name == "speedrun" else []))
    assert "experiment" not in cfg or cfg.experiment is None
    fill_auto(cfg)  # what train.py does first: sizes a recipe leaves to the corpus and the budget
    check_config(cfg)  # the model shape is a valid GPTConfig and the data window fits its context


def test_spam_recipe():
    cfg = composed("experiment=spam")
    assert cfg.task._target_ == "gpt.tasks.classify.Classify"
    assert cfg.task.trainable == "all"  # a random model's last block alone stalls near 0.85
    assert cfg.data.source._target_ == "gpt.data.sources.labeled.LabeledFile"
    assert list(cfg.data.labels) == ["ham", "spam"] and cfg.data.balance
    assert (cfg.model.n_layers, cfg.model.emb_dim) == (2, 128)
    assert cfg.init_from is None  # from nothing but this project


def test_kjv_small_recipe_is_larger_than_the_default():
    default, cfg = composed(), composed("experiment=kjv_small")
    assert cfg.task._target_ == "gpt.tasks.pretrain.Pretrain"
    assert cfg.data.source._target_ == "gpt.data.sources.kjv.KJV"
    assert (cfg.model.n_layers, cfg.model.emb_dim, cfg.model.n_heads) == (6, 160, 5)
    assert cfg.model.n_layers * cfg.model.emb_dim > default.model.n_layers * default.model.emb_dim
    assert cfg.trainer.max_steps > default.trainer.max_steps


def test_instruct_recipe():
    cfg = composed("experiment=instruct")
    assert cfg.task._target_ == "gpt.tasks.instruct.Instruct"
    assert cfg.data.source._target_ == "gpt.data.sources.alpaca.AlpacaFile"
    assert cfg.task.response_tokens == 64
    assert cfg.data.max_length == cfg.model.context_length == 128


def test_command_line_overrides_the_recipe():
    """experiment comes after _self_ in the root defaults, and command-line values come after both."""
    cfg = composed("experiment=spam", "task.trainable=head", "model.n_layers=3", "seed=1", "data.path=x.tsv")
    assert (cfg.task.trainable, cfg.model.n_layers, cfg.seed, cfg.data.source.path) == ("head", 3, 1, "x.tsv")
