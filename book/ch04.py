"""Chapter 4, implementing a GPT model from scratch: the skeleton, layer normalization, GELU, the feed-forward
network, shortcut connections, the transformer block, the full model and greedy text generation.

The scaffolds the book builds on the way (``DummyGPTModel``, ``DummyTransformerBlock``, ``DummyLayerNorm``,
``ExampleDeepNeuralNetwork``) live here; the real parts are the project's own, from ``gpt.model``.

python -m book.ch04
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from book import section
from gpt.generation import generate_text_simple
from gpt.model import GELU, FeedForward, GPTConfig, GPTModel, LayerNorm, TransformerBlock
from gpt.tokenizer import GPT2Tokenizer

GPT_CONFIG_124M = {
    "vocab_size": 50257,  # vocabulary size
    "context_length": 1024,  # context length
    "emb_dim": 768,  # embedding dimension
    "n_heads": 12,  # number of attention heads
    "n_layers": 12,  # number of layers
    "drop_rate": 0.1,  # dropout rate
    "qkv_bias": False,  # query-key-value bias
}
# The book's GPTModel has its own output head; GPT-2 shares it with the token embedding (tie_weights=True).
CONFIG = GPTConfig(**GPT_CONFIG_124M, tie_weights=False)


class DummyGPTModel(nn.Module):
    """4.1: the model's outline, with placeholders for the transformer blocks and the final layer norm."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[DummyTransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = DummyLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = in_idx.shape
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)


class DummyTransformerBlock(nn.Module):
    """A placeholder that passes its input through (the real one: gpt.model.TransformerBlock)."""

    def __init__(self, cfg: dict):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DummyLayerNorm(nn.Module):
    """A placeholder that passes its input through (the real one: gpt.model.LayerNorm)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ExampleDeepNeuralNetwork(nn.Module):
    """4.4: five Linear + GELU layers, each optionally added to its input (a shortcut) where the shapes allow."""

    def __init__(self, layer_sizes: list[int], use_shortcut: bool):
        super().__init__()
        self.use_shortcut = use_shortcut
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Linear(layer_sizes[i], layer_sizes[i + 1]), GELU()) for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            layer_output = layer(x)
            if self.use_shortcut and x.shape == layer_output.shape:
                x = x + layer_output
            else:
                x = layer_output
        return x


LAYER_SIZES = [3, 3, 3, 3, 3, 1]
SAMPLE_INPUT = torch.tensor([[1.0, 0.0, -1.0]])


def gradient_means(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Each weight matrix's mean absolute gradient of the squared error between model(x) and 0."""
    loss = nn.MSELoss()(model(x), torch.tensor([[0.0]]))
    loss.backward()
    return {name: param.grad.abs().mean().item() for name, param in model.named_parameters() if "weight" in name}


def shortcut_gradients(use_shortcut: bool) -> dict[str, float]:
    torch.manual_seed(123)
    return gradient_means(ExampleDeepNeuralNetwork(LAYER_SIZES, use_shortcut), SAMPLE_INPUT)


def main() -> None:
    tokenizer = GPT2Tokenizer()

    section("4.1 Coding an LLM architecture")
    batch = torch.stack([torch.tensor(tokenizer.encode(txt)) for txt in ("Every effort moves you", "Every day holds a")])
    print(batch)
    torch.manual_seed(123)
    model = DummyGPTModel(GPT_CONFIG_124M)
    logits = model(batch)
    print("Output shape:", logits.shape)
    print(logits)
    del model

    section("4.2 Normalizing activations with layer normalization")
    torch.manual_seed(123)
    batch_example = torch.randn(2, 5)
    layer = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
    out = layer(batch_example)
    print(out)
    mean = out.mean(dim=-1, keepdim=True)
    var = out.var(dim=-1, keepdim=True)
    print("Mean:\n", mean)
    print("Variance:\n", var)
    torch.set_printoptions(sci_mode=False)
    out_norm = (out - mean) / torch.sqrt(var)
    print("Normalized layer outputs:\n", out_norm)
    print("Mean:\n", out_norm.mean(dim=-1, keepdim=True))
    print("Variance:\n", out_norm.var(dim=-1, keepdim=True))
    ln = LayerNorm(emb_dim=5)
    out_ln = ln(batch_example)
    print("Mean:\n", out_ln.mean(dim=-1, keepdim=True))
    print("Variance:\n", out_ln.var(dim=-1, unbiased=False, keepdim=True))
    # The book's formula: the biased variance (unbiased=False), eps inside the root, then the learned scale and shift.
    mean = batch_example.mean(dim=-1, keepdim=True)
    var = batch_example.var(dim=-1, keepdim=True, unbiased=False)
    explicit = ln.scale * (batch_example - mean) / torch.sqrt(var + ln.eps) + ln.shift
    print("LayerNorm vs the explicit formula, max difference:", (out_ln - explicit).abs().max().item())

    section("4.3 Implementing a feed forward network with GELU activations")
    x = torch.linspace(-3, 3, 7)
    gelu_explicit = 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    print("x:           ", x)
    print("GELU:        ", GELU()(x))
    print("tanh formula:", gelu_explicit)
    print("ReLU:        ", nn.ReLU()(x))
    print("GELU vs the explicit formula, max difference:", (GELU()(x) - gelu_explicit).abs().max().item())
    ffn = FeedForward(CONFIG)
    x = torch.rand(2, 3, 768)
    print(ffn(x).shape)

    section("4.4 Adding shortcut connections")
    for use_shortcut in (False, True):
        print(f"use_shortcut={use_shortcut}:")
        for name, mean_grad in shortcut_gradients(use_shortcut).items():
            print(f"{name} has gradient mean of {mean_grad}")

    section("4.5 Connecting attention and linear layers in a transformer block")
    torch.manual_seed(123)
    x = torch.rand(2, 4, 768)
    block = TransformerBlock(CONFIG)
    output = block(x)
    print("Input shape:", x.shape)
    print("Output shape:", output.shape)

    section("4.6 Coding the GPT model")
    torch.manual_seed(123)
    model = GPTModel(CONFIG)
    out = model(batch)
    print("Input batch:\n", batch)
    print("\nOutput shape:", out.shape)
    print(out)
    total_params = sum(p.numel() for p in model.parameters())
    print(f"Total number of parameters: {total_params:,}")
    print("Token embedding layer shape:", model.tok_emb.weight.shape)
    print("Output layer shape:", model.out_head.weight.shape)
    total_params_gpt2 = total_params - sum(p.numel() for p in model.out_head.parameters())
    print(f"Number of trainable parameters considering weight tying: {total_params_gpt2:,}")
    total_size_mb = total_params * 4 / (1024 * 1024)  # 4 bytes per float32 parameter
    print(f"Total size of the model: {total_size_mb:.2f} MB")

    section("4.7 Generating text")
    start_context = "Hello, I am"
    encoded = tokenizer.encode(start_context)
    print("encoded:", encoded)
    encoded_tensor = torch.tensor(encoded).unsqueeze(0)
    print("encoded_tensor.shape:", encoded_tensor.shape)
    model.eval()  # no dropout
    out = generate_text_simple(model, encoded_tensor, max_new_tokens=6, context_size=CONFIG.context_length)
    print("Output:", out)
    print("Output length:", len(out[0]))
    print(tokenizer.decode(out.squeeze(0).tolist()))  # an untrained model: random tokens


if __name__ == "__main__":
    main()
