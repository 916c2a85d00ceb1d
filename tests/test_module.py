import math

import pytest
import torch

from gpt.module import GPTLightningModule, next_token_loss, warmup_cosine

MODEL = dict(vocab_size=50257, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=True,
             tie_weights=True)
OPTIM = dict(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95], warmup_steps=10, min_lr_ratio=0.1)


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # half way through the cosine: midway between 1 and the floor
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_loss_is_mean_next_token_cross_entropy():
    logits = torch.zeros(2, 3, 5)
    logits[..., 1] = math.log(4.0)  # p(token 1) = 4/8 = 0.5, every other token 1/8
    assert next_token_loss(logits, torch.ones(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(2))
    assert next_token_loss(logits, torch.zeros(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(8))


def test_weight_decay_applies_to_matrices_only():
    module = GPTLightningModule(MODEL, OPTIM, {"name": "gpt2"}, {})
    decay, no_decay = [
        {id(p) for p in group} for group in (
            [p for p in module.parameters() if p.dim() >= 2], [p for p in module.parameters() if p.dim() < 2])
    ]

    class FakeTrainer:
        estimated_stepping_batches = 100

    module.trainer = FakeTrainer()  # type: ignore[assignment]
    opt = module.configure_optimizers()["optimizer"]
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups[0.1] == decay and groups[0.0] == no_decay
    m = module.model
    assert id(m.tok_emb.weight) in decay and id(m.trf_blocks[0].att.W_query.weight) in decay
    assert id(m.trf_blocks[0].att.W_query.bias) in no_decay and id(m.final_norm.scale) in no_decay
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(module.parameters()))  # the tied head appears once
