import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gpt.model import GPTConfig, GPTModel

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def config(name: str, **overrides) -> GPTConfig:
    """A model config exactly as conf/model/<name>.yaml gives it."""
    values = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    values["vocab_size"] = values["vocab_size"] or 50257
    return GPTConfig(**{**values, **overrides})


def small(**overrides) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=101, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                               qkv_bias=False, tie_weights=False), **overrides})


@pytest.mark.parametrize(
    "name, tie, expected",
    [("gpt2-small", False, 163_009_536), ("gpt2-small", True, 124_412_160),
     ("gpt2-medium", False, 406_212_608), ("gpt2-medium", True, 354_749_440)],
)
def test_parameter_counts_match_the_book(name, tie, expected):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPTModel(config(name, tie_weights=tie))
    assert model.num_parameters() == expected


def test_gpt2_small_size_in_fp32():
    with torch.device("meta"):
        model = GPTModel(config("gpt2-small"))
    assert round(model.num_parameters() * 4 / 2**20, 2) == 621.83


def test_tied_head_shares_the_parameter():
    model = GPTModel(small(tie_weights=True))
    assert model.out_head.weight is model.tok_emb.weight
    with torch.no_grad():
        model.tok_emb.weight[3, 0] = 42.0
    assert model.out_head.weight[3, 0] == 42.0


def test_logits_shape():
    model = GPTModel(small())
    assert model(torch.randint(0, 101, (3, 10))).shape == (3, 10, 101)


def test_changing_a_token_never_changes_earlier_logits():
    torch.manual_seed(0)
    model = GPTModel(small()).eval()
    idx = torch.randint(0, 101, (2, 16))
    base = model(idx)
    for t in range(16):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 101
        out = model(changed)
        assert torch.equal(out[:, :t], base[:, :t])
        assert not torch.allclose(out[:, t], base[:, t])  # the changed position itself does see it


def test_untrained_loss_is_close_to_log_vocab():
    torch.manual_seed(0)
    model = GPTModel(config("tiny")).eval()
    idx = torch.randint(0, 50257, (4, 64))
    targets = torch.randint(0, 50257, (4, 64))
    loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(50257)) < 0.1


def test_emb_dim_not_divisible_by_heads_is_a_config_error():
    with pytest.raises(ValueError, match="emb_dim=30 is not divisible by model.n_heads=4"):
        small(emb_dim=30)


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="longer than the context length 16"):
        GPTModel(small())(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = GPTModel(small(drop_rate=0.5))
    idx = torch.randint(0, 101, (2, 8))
    assert not torch.equal(model.train()(idx), model(idx))
    assert torch.equal(model.eval()(idx), model(idx))
