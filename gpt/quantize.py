"""Fewer bytes per weight for decoding: a trained model in fp32, bf16 or int8. Pure torch.

Cached decoding at batch 1 streams every weight from memory once per token, so its speed is the memory bandwidth
divided by the weights' bytes: bf16 halves them, int8 quarters them.

bf16 on a CPU runs each linear layer through oneDNN with its weight reordered once, at load, into the blocked layout
oneDNN's kernels read (``PackedLinear``): the plain bf16 ``F.linear`` reorders nothing and on a Zen 4 read the
weights of a gpt2-small decoding step at 15.8 GB/s, the packed layer at 22.7 (1.4x; fp32 reads 13.8). This is the
packing torch's own compiler (inductor, with freezing) does for bf16 linears on a CPU, done without compiling.

int8 is torch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): each linear layer's weight in
int8 with one scale per output row, each input quantized on the fly, products in fbgemm's int8 kernels. Chosen by
measurement on a CPU: torchao's ``Int8WeightOnlyConfig`` (torchao 0.18) converts the whole int8 weight back to fp32
at every call outside ``torch.compile``, and ran slower than fp32; its int8-activation config slower still. Only
linear layers are quantized: the embedding table stays in fp32 (decoding reads one row of it per token), so a tied
output head gets its own int8 copy. That copy costs bytes where the embedding is most of the model (a tiny model:
6.5 MB in fp32, 8.1 MB in int8) and saves them where the blocks are (gpt2-small: 498 MB, 282 MB in int8).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from gpt.errors import UserError
from gpt.hardware import cpu_info, native_bf16

DTYPES = ("fp32", "bf16", "int8")


def check_dtype(dtype: str, device: str, flags: set[str] | None = None) -> None:
    """Refuse a decoding dtype that is unknown, bf16 on a CPU without native bf16 (slower than fp32 there), or int8
    off the CPU."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "bf16" and device == "cpu":
        if not native_bf16(cpu_info()[1] if flags is None else flags):
            raise UserError("dtype=bf16: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag), where bf16 "
                             "runs slower than fp32; use dtype=fp32, or dtype=int8 for fewer bytes per weight")
    if dtype == "int8" and device != "cpu":
        raise UserError(f"dtype=int8 runs on the CPU only (fbgemm kernels), not on {device}; use dtype=bf16 there")


class PackedLinear(nn.Module):
    """A bf16 linear layer for sampling on a CPU: its weight in oneDNN's blocked layout, reordered once.

    The same products as ``F.linear`` on the bf16 weight (same kernels, read in a layout laid out for them). The
    packed weight is an opaque oneDNN tensor: it cannot be trained, saved or deep-copied, only multiplied."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def packs_bf16(device: str) -> bool:
    """Whether bf16 linear layers get ``PackedLinear`` here: on a CPU where oneDNN runs bf16."""
    return device == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_linears(model: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` of ``model`` (bf16 already) replaced by a ``PackedLinear``, in place."""
    for name, child in list(model.named_children()):
        setattr(model, name, PackedLinear(child)) if isinstance(child, nn.Linear) else pack_linears(child)
    return model


def for_decoding(model: nn.Module, dtype: str, device: str = "cpu") -> nn.Module:
    """``model`` (changed in place) with its weights in ``dtype`` for sampling: fp32 as it is, bf16 (packed for
    oneDNN on a CPU), or int8. Not for training: neither bf16 packed nor int8 weights have gradients."""
    check_dtype(dtype, device)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
        return pack_linears(model) if packs_bf16(device) else model
    if dtype == "int8":
        with warnings.catch_warnings():  # it warns of a deprecation planned for torch 2.10, still running in 2.13
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as stored (int8 weights count one byte each, a packed bf16 weight two), a shared
    tensor (a tied head) counted once."""
    tensors = {}
    for value in model.state_dict().values():  # int8 layers keep their weights in a (weight, bias) tuple
        for t in value if isinstance(value, tuple) else (value,):
            if isinstance(t, torch.Tensor):  # a packed (oneDNN) tensor has no data pointer, and is never shared
                key = id(t) if t.is_mkldnn else (t.data_ptr(), t.dtype, t.shape)
                tensors[key] = t.numel() * t.element_size()
    return sum(tensors.values())
