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
