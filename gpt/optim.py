"""The optimizer and its learning-rate schedule, shared by every task. Pure torch.

AdamW with weight decay on matrices only (linear weights, embeddings; never biases or norm scales), and a linear
warmup followed by a decay (a cosine, or a straight line: ``optim.decay``) to ``lr * min_lr_ratio`` at the last step,
or, with a wall-clock budget (``TimeBudget``), at the end of the budget: a run cut short by time still finishes its
decay.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection

import torch
from torch.optim._muon import _adjust_lr as adjust_muon_lr  # torch's lr scaling per matrix shape (adjust_lr_fn)

from gpt.errors import UserError


# The decay's shape (optim.decay): from 1 when no progress is made to 0 at the end of the run.
DECAYS = {
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
    # Bergsma et al. 2025 ("Straight to Zero"): a straight line to (near) zero trains better than a cosine
    "linear": lambda progress: 1 - progress,
}


def warmup_decay_at(step: int, warmup_steps: int, progress: float, min_lr_ratio: float,
                    decay: str = "cosine") -> float:
    """LR multiplier: the ``decay`` from 1 at ``progress`` 0 down to ``min_lr_ratio`` at ``progress`` 1 (the
    fraction of the run done, in steps or in time), capped by a linear warmup from 0 over the first
    ``warmup_steps`` steps unless the run is over (a time budget that runs out during warmup still ends at the
    floor)."""
    progress = min(1.0, max(0.0, progress))
    value = min_lr_ratio + (1 - min_lr_ratio) * DECAYS[decay](progress)
    return min(value, (step + 1) / warmup_steps) if step < warmup_steps and progress < 1 else value


def warmup_decay(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float, decay: str = "cosine") -> float:
    """The schedule over ``total_steps``: the decay starts after warmup and ends at the last step."""
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return warmup_decay_at(step, warmup_steps, progress, min_lr_ratio, decay)


class TimeBudget:
    """How far a run is through a wall-clock budget of ``budget_s`` seconds counted from ``started`` (the
    process's start, so start-up and tokenizer training are paid from it). Training runs from ``start()`` until
    ``reserve_s + tail_s`` before the end (kept for the last checkpoint and exit, and for the last validation,
    whose duration the trainer measures into ``tail_s``), and ``progress()`` goes from 0 to 1 over that time,
    driving the cosine instead of the step count.

    Resumable: ``state_dict()`` holds the budget spent and the progress made; a resumed run spends what is left
    and carries the progress on from where it was."""

    def __init__(self, budget_s: float, started: float, reserve_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if budget_s <= 0:
            raise UserError(f"budget_s={budget_s}: a time budget must be a positive number of seconds")
        self.budget_s, self.started, self.reserve_s, self.clock = budget_s, started, reserve_s, clock
        self.spent_before, self.progress_before = 0.0, 0.0
        self.tail_s = 0.0
        self._start: float | None = None
        self._end = 0.0

    def start(self) -> None:
        """Training begins now: whatever this process has spent so far is no longer available to it."""
        self._start = self.clock()
        self._end = self.started + self.budget_s - self.spent_before - self.reserve_s

    def progress(self) -> float:
        if self._start is None:
            return self.progress_before
        now, end = self.clock(), self._end - self.tail_s
        done = 1.0 if end <= self._start else (now - self._start) / (end - self._start)
        return min(1.0, self.progress_before + (1 - self.progress_before) * done)

    def done(self) -> bool:
        return self.progress() >= 1.0

    def state_dict(self) -> dict:
        return {"spent_s": self.spent_before + self.clock() - self.started, "progress": self.progress()}

    def load_state_dict(self, state: dict) -> None:
        self.spent_before, self.progress_before = state["spent_s"], state["progress"]


def closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """What an optimizer's ``step(closure)`` returns: the loss the closure recomputes, with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Chained(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one, so that Lightning's automatic optimization,
    the schedule and the checkpoint see a single optimizer. Its param_groups and state are theirs, read live
    (loading a state dict replaces an optimizer's group dicts)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        super().__init__([g for o in optimizers for g in o.param_groups], {})

    def add_param_group(self, group: dict) -> None:  # the groups belong to the parts (Optimizer.__init__ calls it)
        pass

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @param_groups.setter
    def param_groups(self, value) -> None:  # Optimizer.__init__ sets it
        pass

    @property
    def state(self) -> dict:
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ sets it
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"], strict=True):
            o.load_state_dict(s)


class BatchedMuon(torch.optim.Muon):
    """torch's Muon with the matrices of one shape orthogonalized together, as one batch of Newton-Schulz steps.

    torch.optim.Muon runs the iteration one matrix at a time (it has no foreach path), and a small model's matrices
    are so small that the per-operation overhead outweighs the arithmetic: the 14 matrices of a 2-layer, 128-wide
    GPT took 13.5 ms a step on a 2-core Zen 4, batched 5.7 ms. The same update and the same state, so a checkpoint
    of either loads into the other."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            if not params:
                continue
            momentum, lr = group["momentum"], group["lr"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = [g.lerp(b, momentum) for g, b in zip(grads, buffers)] if group["nesterov"] else buffers
            by_shape = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[p.shape].append(i)
            for shape, members in by_shape.items():
                stacked = torch.stack([updates[i] for i in members])
                ortho = newton_schulz(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"])
                scaled_lr = adjust_muon_lr(lr, group["adjust_lr_fn"], shape)  # torch's rule for the group's choice
                for i, update in zip(members, ortho):
                    params[i].mul_(1 - lr * group["weight_decay"]).add_(update, alpha=-scaled_lr)
        return loss


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """(n, A, B) matrices -> each one's nearest semi-orthogonal matrix, approximately (Muon's quintic iteration in
    bf16, as torch's, on the wide side of each matrix)."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(1) > g.size(2)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # spectral norms at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


ROLES = ("matrices", "vectors", "hidden")  # AdamW with weight decay, AdamW without, Muon


def check_optimizer(name: str, strategy: str = "", decay: str = "cosine") -> None:
    """Refuse an unknown ``optim.name`` or ``optim.decay``, and Muon under FSDP (``strategy``: the strategy's class
    path)."""
    if name not in ("adamw", "muon"):
        raise UserError(f"optim.name must be adamw or muon, got {name!r}")
    if decay not in DECAYS:
        raise UserError(f"optim.decay must be {' or '.join(DECAYS)}, got {decay!r}")
    if name == "muon" and "FSDP" in strategy:
        raise UserError("optim.name=muon orthogonalizes whole weight matrices, which FSDP splits across GPUs; "
                         "use trainer=ddp, or optim.name=adamw with FSDP")


def group_settings(role: str, optim: dict) -> dict:
    """The peak lr, weight decay and (AdamW's) betas that a parameter group of ``role`` takes from ``optim``."""
    if role == "hidden":
        return {"lr": optim["lr"] * optim["muon_lr_scale"], "weight_decay": optim["weight_decay"]}
    decay = optim["weight_decay"] if role == "matrices" else 0.0
    return {"lr": optim["lr"], "weight_decay": decay, "betas": tuple(optim["betas"])}


def optimizer_with_schedule(
    parameters, optim: dict, total_steps: int, fused: bool, budget: TimeBudget | None = None,
    hidden: Collection[torch.Tensor] = (),
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer over the ``parameters`` that train, and its per-step schedule, fitted to ``total_steps`` or,
    given a ``budget``, to its time; ``optim`` is the ``optim`` config.

    ``optim.name=adamw``: AdamW over everything. ``muon``: Muon over the ``hidden`` weight matrices (the blocks'
    linear layers) and AdamW over the rest (embeddings, output head, norms, biases), which Muon is not for. Muon
    orthogonalizes each matrix's momentum (Newton-Schulz) so that every direction of the update moves at the same
    rate; its step is scaled to AdamW's update size (Moonshot's rule), so lr and weight decay mean the same for
    both, and ``muon_lr_scale`` multiplies the lr of Muon's matrices."""
    decay = optim["decay"]
    check_optimizer(optim["name"], decay=decay)
    params = [p for p in parameters if p.requires_grad]
    muon = {id(p) for p in hidden} if optim["name"] == "muon" else set()
    groups = {
        "hidden": [p for p in params if id(p) in muon],
        "matrices": [p for p in params if id(p) not in muon and p.dim() >= 2],
        "vectors": [p for p in params if p.dim() < 2],
    }
    adamw = [{"params": groups[r], "role": r, **group_settings(r, optim)} for r in ("matrices", "vectors")]
    optimizer = torch.optim.AdamW(adamw, fused=fused)
    if groups["hidden"]:
        hidden_group = {"params": groups["hidden"], "role": "hidden", **group_settings("hidden", optim)}
        optimizer = Chained(optimizer, BatchedMuon([hidden_group], adjust_lr_fn="match_rms_adamw"))
    warmup, floor = optim["warmup_steps"], optim["min_lr_ratio"]
    if budget is None:
        multiplier = lambda step: warmup_decay(step, warmup, total_steps, floor, decay)  # noqa: E731
    else:
        multiplier = lambda step: warmup_decay_at(step, warmup, budget.progress(), floor, decay)  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, schedule


def set_optim_values(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR,
                     optim: dict) -> None:
    """Puts ``optim``'s lr, betas and weight decay into an optimizer and schedule restored from a checkpoint
    (which hold the values they were saved with); the lr is the schedule's at its current step, as ``schedule``
    itself computes it. On a fresh optimizer it changes nothing."""
    # A checkpoint from before groups had roles holds AdamW's two groups, in ROLES' order.
    settings = [group_settings(group.get("role", ROLES[i]), optim) for i, group in enumerate(optimizer.param_groups)]
    schedule.base_lrs = [s["lr"] for s in settings]
    for group, values, factor in zip(optimizer.param_groups, settings, schedule.lr_lambdas):
        group.update(values, initial_lr=values["lr"], lr=values["lr"] * factor(schedule.last_epoch))
