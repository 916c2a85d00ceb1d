"""The learning-rate schedule over a wall-clock budget (the step schedule: tests/test_module.py)."""

import copy

import pytest
import torch

from gpt.optim import TimeBudget, warmup_decay, warmup_decay_at


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_time_budget_decays_to_the_floor_when_the_budget_is_spent():
    clock = FakeClock()
    budget = TimeBudget(60, started=clock.now, reserve_s=2, clock=clock)
    clock.now += 10  # start-up and tokenizer training, paid from the budget
    budget.start()
    assert budget.progress() == 0 and not budget.done()
    clock.now += 24  # half of the 48 s left for training (60 - 10 spent - 2 reserved)
    assert budget.progress() == pytest.approx(0.5)
    assert warmup_decay_at(50, 5, budget.progress(), 0.1) == pytest.approx(0.55)
    clock.now += 24
    assert budget.done()
    assert warmup_decay_at(500, 5, budget.progress(), 0.1) == pytest.approx(0.1)


def test_time_budget_keeps_back_the_measured_tail():
    clock = FakeClock()
    budget = TimeBudget(60, started=clock.now, clock=clock)
    budget.start()
    budget.tail_s = 20  # the last validation will take 20 s: training ends at 40 s
    clock.now += 40
    assert budget.done()


def test_time_budget_resumes_with_the_time_left_and_the_progress_made():
    clock = FakeClock()
    first = TimeBudget(100, started=clock.now, clock=clock)
    first.start()
    clock.now += 30
    state = first.state_dict()
    assert state == {"spent_s": pytest.approx(30), "progress": pytest.approx(0.3)}

    clock.now = 1000.0  # a new process, 10 s of start-up
    resumed = TimeBudget(100, started=clock.now, clock=clock)
    resumed.load_state_dict(state)
    assert resumed.progress() == pytest.approx(0.3)  # before training restarts: where it stopped
    clock.now += 10
    resumed.start()
    clock.now += 30  # half of the 60 s left
    assert resumed.progress() == pytest.approx(0.3 + 0.7 * 0.5)
    clock.now += 30
    assert resumed.done()


def test_time_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeBudget(0, started=0.0)


def test_a_linear_decay_is_a_straight_line_from_the_peak_to_the_floor():
    lin = [warmup_decay(s, 10, 110, 0.1, "linear") for s in (10, 35, 60, 85, 110)]
    assert lin == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    # the cosine's midpoint is the same, and it stays above the line in the first half and below it in the second
    assert warmup_decay(60, 10, 110, 0.1) == pytest.approx(0.55)
    assert warmup_decay(35, 10, 110, 0.1) > lin[1] and warmup_decay(85, 10, 110, 0.1) < lin[3]


def test_a_budget_spent_during_warmup_still_ends_at_the_floor():
    assert warmup_decay_at(1, 30, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_decay_at(1, 30, 0.0, 0.1) == pytest.approx(2 / 30)


# ---------------------------------------------------------------- Muon on the blocks' matrices, AdamW on the rest

MUON = dict(name="muon", lr=2e-3, weight_decay=0.1, betas=[0.9, 0.95], warmup_steps=2, min_lr_ratio=0.1,
            decay="cosine", muon_lr_scale=3.0)


def small_model():
    from gpt.model import GPTConfig, GPTModel

    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                              qkv_bias=True, tie_weights=True))


def muon_optimizer(model, optim=MUON):
    from gpt.optim import optimizer_with_schedule

    hidden = [m.weight for m in model.trf_blocks.modules() if isinstance(m, torch.nn.Linear)]
    return optimizer_with_schedule(model.parameters(), optim, 20, fused=False, hidden=hidden)


def train_steps(model, optimizer, schedule, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 17), generator=g)
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else_once():
    model = small_model()
    optimizer, _ = muon_optimizer(model)
    roles = {g["role"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    linears = {id(m.weight) for m in model.trf_blocks.modules() if isinstance(m, torch.nn.Linear)}
    assert roles["hidden"] == linears
    assert id(model.tok_emb.weight) in roles["matrices"]  # the embedding and the tied head stay with AdamW
    assert sum(len(ids) for ids in roles.values()) == len(list(model.parameters()))
    lrs = {g["role"]: g["initial_lr"] for g in optimizer.param_groups}
    assert lrs == {"hidden": pytest.approx(6e-3), "matrices": 2e-3, "vectors": 2e-3}
    with pytest.raises(ValueError, match="optim.name must be adamw or muon"):
        muon_optimizer(model, MUON | {"name": "sgd"})


def test_muon_resumes_from_its_state_exactly():
    model = small_model()
    optimizer, schedule = muon_optimizer(model)
    train_steps(model, optimizer, schedule, 3)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict(), schedule.state_dict()))
    train_steps(model, optimizer, schedule, 3, seed=2)

    again = small_model()
    again.load_state_dict(saved[0])
    opt2, sched2 = muon_optimizer(again)
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    train_steps(again, opt2, sched2, 3, seed=2)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert any(s.get("momentum_buffer") is not None for s in opt2.state.values())  # Muon's state came back


@pytest.mark.parametrize("nesterov,adjust_lr_fn", [(True, "match_rms_adamw"), (False, None)])
def test_batched_muon_makes_torchs_muon_updates_and_state(nesterov, adjust_lr_fn):
    from gpt.optim import BatchedMuon

    torch.manual_seed(0)
    shapes = [(16, 16), (40, 16), (16, 40), (16, 16), (40, 16)]  # square, tall and wide; shapes repeat (batched)
    ours = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    settings = dict(lr=3e-3, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    batched, reference = BatchedMuon(ours, **settings), torch.optim.Muon(theirs, **settings)
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        batched.step()
        reference.step()
    for a, b, p0 in zip(ours, theirs, start):
        assert not torch.equal(a, p0)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * (b - p0).abs().max().item())
    reference.load_state_dict(batched.state_dict())  # the same state: a checkpoint moves between the two
    for a, b in zip(ours, theirs):
        assert torch.equal(batched.state[a]["momentum_buffer"], reference.state[b]["momentum_buffer"])


def test_restored_groups_take_the_configured_lr_of_their_role():
    from gpt.optim import set_optim_values

    model = small_model()
    optimizer, schedule = muon_optimizer(model)
    train_steps(model, optimizer, schedule, 4)
    set_optim_values(optimizer, schedule, MUON | {"lr": 1e-3, "muon_lr_scale": 5.0})
    factor = schedule.lr_lambdas[0](schedule.last_epoch)
    lrs = {g["role"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"hidden": pytest.approx(5e-3 * factor), "matrices": pytest.approx(1e-3 * factor),
                   "vectors": pytest.approx(1e-3 * factor)}
    schedule.step()
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(5e-3 * schedule.lr_lambdas[0](schedule.last_epoch))
