"""Low-rank adaptation (LoRA): train a small update B @ A beside a frozen weight instead of the weight itself.

y = x W^T + b + (alpha / rank) * x A^T B^T, with A (rank, in) random and B (out, rank) zero, so at the start the
wrapped layer computes exactly what the base layer did. Pure torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gpt.errors import UserError


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (frozen) plus a trainable low-rank update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank <= 0:
            raise UserError(f"task.lora.rank must be a positive integer, got {rank}")
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # zero: the update starts at nothing
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's own initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W + scaling * B @ A: the same outputs, no adapter. A new weight tensor, so a
        base weight shared with another module (a tied output head) is left as it was."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.B @ self.A)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out.to(self.base.weight.device)


def _replace(model: nn.Module, select: type, make) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, select):
            setattr(model, name, make(child))
        else:
            _replace(child, select, make)


def apply_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each of its ``nn.Linear`` layers with an adapter (in place):
    afterwards only the adapters' A and B train."""
    model.requires_grad_(False)
    _replace(model, nn.Linear, lambda linear: LoRALinear(linear, rank, alpha))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by the equivalent plain ``nn.Linear`` (in place), for inference or export."""
    _replace(model, LoRALinear, lambda lora: lora.merged())
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared parameter counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
