"""On one CUDA GPU: the attention kernels, KV-cached decoding, and train.py -> generate.py end to end in bf16-mixed,
with and without torch.compile. Skipped where torch sees no CUDA device; on a GPU the file takes a minute or two,
most of it torch.compile's run.

Subprocesses inherit this process's environment (PYTHONPATH included).
"""

import math
import re

import pytest
import torch

from gpt.data.sources.kjv import kjv_text
from gpt.generation import generate
from gpt.model import GPTConfig, GPTModel
from test_entrypoints import TINY, run, scalars

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")

SHAPE = dict(vocab_size=1000, context_length=64, emb_dim=128, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=True,
             tie_weights=True)


@pytest.fixture
def fp32_matmuls():
    """Full fp32 matmuls (no TF32) while the test runs: train.py turns TF32 on, the comparisons here want it off."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    assert not torch.backends.cuda.matmul.allow_tf32
    yield
    torch.set_float32_matmul_precision(before)


def twin_models() -> dict[str, GPTModel]:
    """The same random weights on the GPU, once per attention implementation."""
    torch.manual_seed(0)
    models = {impl: GPTModel(GPTConfig(**SHAPE, attn_impl=impl)).cuda() for impl in ("explicit", "sdpa")}
    models["sdpa"].load_state_dict(models["explicit"].state_dict())
    return models


def test_sdpa_and_explicit_attention_agree_on_the_gpu(fp32_matmuls):
    models = twin_models()
    idx = torch.randint(0, SHAPE["vocab_size"], (4, SHAPE["context_length"]), device="cuda")
    logits = {impl: m(idx) for impl, m in models.items()}
    torch.testing.assert_close(logits["sdpa"], logits["explicit"], atol=1e-5, rtol=0)
    # Training's backward through the fused kernel: the same gradients.
    for out in logits.values():
        out.float().square().mean().backward()
    grads = {impl: torch.cat([p.grad.flatten() for p in m.parameters()]) for impl, m in models.items()}
    assert (grads["sdpa"] - grads["explicit"]).norm() <= 1e-4 * grads["explicit"].norm()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = {impl: m(idx) for impl, m in models.items()}
    assert bf16["sdpa"].dtype == torch.bfloat16
    torch.testing.assert_close(bf16["sdpa"].float(), bf16["explicit"].float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(bf16["sdpa"].float(), logits["explicit"].detach(), atol=2e-2, rtol=0)


def uncached(model: GPTModel):
    """The model seen without its ``new_cache``: generation then re-runs the whole window at every step."""
    return lambda idx: model(idx)


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit", "wrapper"])
def test_kv_cached_generation_equals_uncached_on_the_gpu(attn_impl, fp32_matmuls):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(**SHAPE | dict(context_length=12), attn_impl=attn_impl)).cuda().eval()
    prompt = torch.randint(0, SHAPE["vocab_size"], (3, 5), device="cuda")
    # 20 new tokens run past the 12-token context: both paths must crop the window the same way.
    cached = generate(model, prompt, 20, context_length=12)
    assert cached.device.type == "cuda" and cached.shape == (3, 25)
    assert torch.equal(cached, generate(uncached(model), prompt, 20, context_length=12))
    sampled = [generate(m, prompt, 20, 12, temperature=1.0, top_k=50, top_p=0.95,
                        generator=torch.Generator(device="cuda").manual_seed(1)) for m in (model, uncached(model))]
    assert torch.equal(*sampled)
    assert len(set(sampled[0][:, 5:].flatten().tolist())) > 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The start of the built-in corpus as a text file, and a token cache directory for it."""
    tmp = tmp_path_factory.mktemp("cuda_e2e")
    path = tmp / "corpus.txt"
    path.write_text(kjv_text()[:60_000], encoding="utf-8")
    return [*TINY, "data=text_file", f"data.path={path}", f"data.cache_dir={tmp / 'cache'}"]


def train_then_generate(run_dir, common: list[str], *overrides: str) -> dict:
    """train.py on the GPU in bf16-mixed, then generate.py from its checkpoint with device=cuda (greedy, then
    sampled); returns the last checkpoint, read back on the CPU."""
    proc = run("train.py", *common, "trainer=gpu", "trainer.precision=bf16-mixed", *overrides,
               f"hydra.run.dir={run_dir}")
    log = proc.stdout + proc.stderr
    assert re.search(r"GPU available: True.*used: True", log), log[-3000:]
    val_loss = float(re.search(r"^val/loss: (\S+)", proc.stdout, re.M).group(1))
    assert math.isfinite(val_loss)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    prompt = "And God said"
    greedy = run("generate.py", f"ckpt={run_dir}", f"prompt={prompt}", "max_new_tokens=8", "temperature=0",
                 "device=cuda").stdout
    assert greedy.startswith(prompt) and len(greedy.strip()) > len(prompt)
    sampled = run("generate.py", f"ckpt={run_dir}", f"prompt={prompt}", "max_new_tokens=8", "top_p=0.9",
                  "device=cuda").stdout
    assert sampled.startswith(prompt)
    return ckpt


def test_train_bf16_on_the_gpu_then_generate_on_the_gpu(corpus, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = train_then_generate(run_dir, corpus, "speed.compile=false", "trainer.max_steps=20")
    assert ckpt["global_step"] == 20
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values())  # bf16-mixed: fp32 weights
    val = scalars(run_dir, "val/loss")
    assert [step for step, _ in val] == [9, 19] and val[-1][1] < val[0][1]


def test_compiled_training_on_the_gpu_saves_plain_names(corpus, tmp_path):
    ckpt = train_then_generate(tmp_path / "run", corpus, "speed.compile=true", "trainer.max_steps=10")
    assert ckpt["global_step"] == 10
    state = ckpt["state_dict"]
    assert "model.trf_blocks.0.att.W_query.weight" in state
    assert not [k for k in state if "_orig_mod." in k]
