"""experiment=speedrun's sizes: the vocabulary follows the corpus, the width follows the budget."""

import pytest
from omegaconf import OmegaConf

from gpt.training.recipe import fill_auto, speedrun_sizes
from gpt.training.setup import budget_seconds


def test_vocabulary_grows_with_the_corpus_within_bounds():
    one_mb, four_mb = speedrun_sizes(1_000_000, 200), speedrun_sizes(4_100_000, 200)
    assert one_mb["tokenizer.vocab_size"] == 1024 and four_mb["tokenizer.vocab_size"] == 4096
    assert speedrun_sizes(1_000, 200)["tokenizer.vocab_size"] == 512  # a byte-level BPE needs > 256
    assert speedrun_sizes(10**9, 200)["tokenizer.vocab_size"] == 4096


def test_width_grows_with_the_budget_and_heads_stay_64_wide():
    widths = [speedrun_sizes(10**6, b)["model.emb_dim"] for b in (30, 200, 600, 1800, 10**6)]
    assert widths == [128, 128, 192, 384, 512]
    assert all(speedrun_sizes(10**6, b)["model.n_heads"] * 64 == w for b, w in zip((30, 200, 600, 1800), widths))


def test_dropout_only_where_the_run_reads_the_text_many_times():
    assert speedrun_sizes(900_000, 106)["model.drop_rate"] == 0.1  # 1 MB in 106 s: about 9 passes
    assert speedrun_sizes(3_700_000, 88)["model.drop_rate"] == 0.0  # the KJV in 88 s: about 1.9
    assert speedrun_sizes(3_700_000, 600)["model.drop_rate"] == 0.1


def test_fill_auto_needs_a_budget_and_replaces_only_auto(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("x" * 300_000, encoding="utf-8")
    cfg = OmegaConf.create({
        "budget_s": None, "trainer": {},
        "data": {"source": {"_target_": "gpt.data.sources.text_file.TextFile", "path": str(corpus)}},
        "tokenizer": {"name": "bpe", "vocab_size": "auto"}, "model": {"emb_dim": 96, "n_heads": "auto"},
    })
    with pytest.raises(ValueError, match="give budget_s"):
        fill_auto(cfg)
    cfg.budget_s = 200
    fill_auto(cfg)
    assert cfg.tokenizer.vocab_size == 512 and cfg.model.emb_dim == 96 and cfg.model.n_heads == 1  # heads of 96
    cfg.model.update(emb_dim=320, n_heads="auto")
    fill_auto(cfg)
    assert cfg.model.n_heads == 5  # the heads of a given width divide it: 5 of 64


@pytest.mark.parametrize("max_time, seconds", [("00:01:30", 90), ("01:00:00:05", 86405), ({"minutes": 2}, 120)])
def test_trainer_max_time_is_a_budget(max_time, seconds):
    assert budget_seconds(OmegaConf.create({"budget_s": None, "trainer": {"max_time": max_time}})) == seconds


def test_bad_max_time_and_two_budgets_are_refused():
    with pytest.raises(ValueError, match="not a duration"):
        budget_seconds(OmegaConf.create({"trainer": {"max_time": "soon"}}))
    with pytest.raises(ValueError, match="not both"):
        budget_seconds(OmegaConf.create({"budget_s": 60, "trainer": {"max_time": "00:01:00"}}))
