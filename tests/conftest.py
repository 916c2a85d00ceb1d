import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gpt.model import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
# Real data for end-to-end checks lives in ../shared/data beside the checkout; tests skip when it is absent.
SHARED_DATA = Path(os.environ.get("GPT_SHARED_DATA", ROOT.parent / "shared" / "data"))


class RunsCode:
    """Unpickling this calls open(path, "w"): the file appears if and only if code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def shared_file():
    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"{path} not present (see README: data for end-to-end checks)")
        return path

    return get


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from gpt.tokenizer import GPT2Tokenizer

    return GPT2Tokenizer()


class ScriptedModel(nn.Module):
    """A stand-in GPT that answers a fixed script of tokens (one per forward) and records what it was shown."""

    EOT = 50256

    def __init__(self, script: list[int], context_length: int = 512):
        super().__init__()
        self.cfg = GPTConfig(vocab_size=self.EOT + 1, context_length=context_length, emb_dim=2, n_heads=1,
                             n_layers=1, drop_rate=0.0, qkv_bias=False, tie_weights=False)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.script, self.seen = list(script), []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.seen.append(idx[0].tolist())
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.EOT + 1)
        logits[:, -1, self.script.pop(0)] = 1.0
        return logits
