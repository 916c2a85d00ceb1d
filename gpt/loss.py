"""Next-token cross-entropy, plain and chunked. Pure torch.

The plain loss builds the full logits tensor (B*T, V): 206 MB in fp32 for 1,024 tokens of GPT-2's vocabulary,
then as much again for its log-softmax and for each gradient. The chunked loss computes the output head and the
cross-entropy a few hundred tokens at a time and works out the gradients on the spot, while each chunk's logits
are still in cache, so the full tensor never exists. Same maths, same result (tests/test_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.errors import UserError

IGNORE_INDEX = -100  # a target with this value is not predicted (padding, or a prompt the model need not learn)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting every next token: logits (B, T, V), targets (B, T); targets equal to
    ``IGNORE_INDEX`` do not count."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def chunked_next_token_loss(
    hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, ignore: bool = False
) -> torch.Tensor:
    """``next_token_loss(hidden @ head_weight.T, targets)`` without materialising the logits.

    hidden (B, T, C) final features, head_weight (V, C) the output head, targets (B, T); ``chunk_size`` tokens
    of logits exist at a time. ``ignore``: leave out the targets equal to ``IGNORE_INDEX`` (a check that costs a
    device sync, so pretraining, whose targets are all real, skips it).
    """
    if chunk_size <= 0:
        raise UserError(f"loss chunk size must be positive, got {chunk_size}")
    h, t = hidden.flatten(0, 1), targets.flatten()
    if ignore:
        keep = t != IGNORE_INDEX
        h, t = h[keep], t[keep]  # the gradient of a dropped row is zero
    if torch.is_grad_enabled() and (h.requires_grad or head_weight.requires_grad):
        return _HeadCrossEntropy.apply(h, head_weight, t, chunk_size)
    with torch.no_grad():  # evaluation: only the loss
        total = sum(F.cross_entropy(_logits(h[s : s + chunk_size], head_weight), t[s : s + chunk_size],
                                    reduction="sum") for s in range(0, len(t), chunk_size))
        return total / len(t)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run the head's matmuls in (bf16 under bf16-mixed), else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(n, C) features -> (n, V) logits in fp32 (the softmax wants the precision)."""
    dtype = _compute_dtype(h)
    return (h.to(dtype) @ weight.to(dtype).T).float()


class _HeadCrossEntropy(torch.autograd.Function):
    """Output head + mean cross-entropy, chunk by chunk, with the gradients computed in the forward pass.

    For one token with logits z and target y, d loss / d z = softmax(z) - onehot(y), divided by N for the mean.
    The head's gradients then follow by the chain rule: d h = dz @ W and d W = dz^T @ h. Backward only scales the
    stored gradients by the incoming one (1 for a plain loss.backward()).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        n_tokens = len(targets)
        dtype = _compute_dtype(h)
        w = weight.to(dtype)
        loss = torch.zeros((), device=h.device, dtype=torch.float32)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight, dtype=torch.float32)
        for s in range(0, n_tokens, chunk_size):
            h_c, t_c = h[s : s + chunk_size].to(dtype), targets[s : s + chunk_size]
            rows = torch.arange(len(t_c), device=h.device)
            z = (h_c @ w.T).float()  # (n, V) logits
            z_target = z[rows, t_c]
            z_max = z.amax(dim=-1)
            p = z.sub_(z_max[:, None]).exp_()  # in place: exp(z - max), the unnormalised softmax
            p_sum = p.sum(dim=-1)
            loss += (z_max + p_sum.log() - z_target).sum()  # log-sum-exp minus the target's logit
            dz = p.mul_((1.0 / (p_sum * n_tokens))[:, None])  # softmax / N
            dz[rows, t_c] -= 1.0 / n_tokens
            dz = dz.to(dtype)
            grad_h[s : s + chunk_size] = dz @ w
            if grad_w.dtype == dtype:
                grad_w.addmm_(dz.T, h_c)
            else:
                grad_w += (dz.T @ h_c).float()
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return loss / n_tokens

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None


def language_model_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int | None, ignore: bool = False
) -> torch.Tensor:
    """Mean next-token loss of a GPTModel on (B, T) inputs and targets: the full logits when ``chunk_size`` is
    None or the head is not a plain Linear (LoRA adapters), else the head and the loss a chunk at a time (same
    value, far less memory)."""
    if chunk_size is None or type(model.out_head) is not nn.Linear:
        return next_token_loss(model(inputs), targets)
    return chunked_next_token_loss(model.hidden_states(inputs), model.out_head.weight, targets, chunk_size, ignore)
