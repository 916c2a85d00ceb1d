"""The learning-rate schedule over a wall-clock budget (the step schedule: tests/test_module.py)."""

import pytest

from gpt.optim import TimeBudget, warmup_cosine_at


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
    assert warmup_cosine_at(50, 5, budget.progress(), 0.1) == pytest.approx(0.55)
    clock.now += 24
    assert budget.done()
    assert warmup_cosine_at(500, 5, budget.progress(), 0.1) == pytest.approx(0.1)


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


def test_a_budget_spent_during_warmup_still_ends_at_the_floor():
    assert warmup_cosine_at(1, 30, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_at(1, 30, 0.0, 0.1) == pytest.approx(2 / 30)
