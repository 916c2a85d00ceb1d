"""Checkpoints are read with weights-only unpickling: a crafted file cannot run code."""

import pickle

import pytest
import torch

from conftest import RunsCode
from gpt.tasks import load_model, load_trained


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = {"hyper_parameters": {"model": {}, "tokenizer": {"name": "gpt2"}}, "state_dict": {}, "x": RunsCode(marker)}
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_trained(tmp_path / "evil.ckpt")
    assert not marker.exists()
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the same object through plain pickle does run code
    assert marker.exists()


@pytest.mark.parametrize("ckpt, pretrained", [(None, None), ("a.ckpt", "gpt2")])
def test_load_model_needs_exactly_one_source(ckpt, pretrained):
    with pytest.raises(ValueError, match="exactly one of ckpt"):
        load_model(ckpt, pretrained)


def test_weights_that_do_not_fit_their_hyperparameters_are_a_checkpoint_error(tmp_path):
    from gpt.checkpoint import CheckpointError
    from gpt.model import GPTConfig, GPTModel

    cfg = GPTConfig(vocab_size=20, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False,
                    tie_weights=True)
    state = {f"model.{k}": v for k, v in GPTModel(cfg).state_dict().items() if k != "final_norm.shift"}
    torch.save({"hyper_parameters": {"model": cfg.to_dict(), "tokenizer": {"name": "gpt2"}}, "state_dict": state},
               tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="odd.ckpt: its weights do not fit the model .*final_norm.shift"):
        load_trained(tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=f"no checkpoint in {tmp_path}: expected checkpoints/best.ckpt"):
        load_trained(tmp_path)  # a folder that is not a run directory
