"""How fast this codebase trains, samples and tokenizes on the current machine, beside Hugging Face transformers.

    python benchmarks/bench.py            # the full run (about 30 minutes on 2 cores)
    python benchmarks/bench.py --quick    # fewer steps and tokens, one round (a few minutes)
    python benchmarks/bench.py --ckpt outputs/<run>   # also the quality of bf16 / int8 decoding on a trained model
    python benchmarks/bench.py --device cuda [--precision bf16-mixed|32-true] [--quick]   # on one GPU

Each figure is measured in its own fresh process (so its peak RSS is its own) and is the median over several
timed steps after a warm-up. The processes compared in a table run interleaved (A, B, C, A, B, C, ...) for
--rounds rounds (3; 1 with --quick): a table shows the median over the rounds and their range, so that the
machine's drift lands on every row alike. Training uses the shapes of conf/model/tiny.yaml (batch 8 x 128) and
conf/model/gpt2-small.yaml (batch 2 x 256), both with GPT-2's tied head and qkv biases so that our model and
GPT2LMHeadModel are the same network; dropout is each config's. HF runs twice: as configured by default (exact
GELU, its cache built in training too) and "tuned" (GPT-2's gelu_pytorch_tanh, which is ours, and use_cache=False),
so that the gap left is what our code does differently (mainly the chunked loss). Training also runs in bf16-mixed
where the CPU has native bf16. Decoding runs our model in fp32, bf16 (native bf16 only) and int8 (gpt/quantize.py);
with --ckpt a trained model also gives each dtype's perplexity on --text (a text it was not trained on) and how
many of its first 50 greedy tokens match fp32's. MFU is against the theoretical peak (cores x FLOP/cycle x clock,
FLOP/cycle from the CPU's flags); a figure above 80% is flagged as suspect. Not part of the test suite.

On a GPU (--device cuda) training runs at realistic shapes (tiny 64 x 128, gpt2-small 16 x 1024; --quick: only
gpt2-small) in --precision (default bf16-mixed: the Lightning path with trainer=gpu and that precision, the plain
loops under torch.autocast(bfloat16)); both of our paths use trainer=gpu's speed settings (conf/speed/gpu.yaml:
bigger loss chunks, compiled blocks). fp32 matmuls run in TF32 as train.py sets them, every timed step ended by
torch.cuda.synchronize(); MFU is against a bf16 (or, for 32-true, TF32) matmul measured on the same GPU, and the
memory column is the peak GPU memory allocated. Generation stays fp32 (no TF32), naive re-forward only without
--quick.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_SHAPES = {"tiny": (8, 128), "gpt2-small": (2, 256)}  # (batch, sequence length)
CUDA_TRAIN_SHAPES = {"tiny": (64, 128), "gpt2-small": (16, 1024)}  # a GPU's: long enough steps, a few GB
GEN_SHAPE, GEN_PROMPT = "gpt2-small", 16


# ---------------------------------------------------------------- helpers (run inside a measuring process)


def compose(shape: str, overrides: tuple[str, ...] = ()):
    """The project's own config (conf/config.yaml) with model=<shape>, as train.py would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[f"model={shape}", *overrides])


def train_shapes(a) -> dict:
    """The (batch, sequence length) of each training shape measured on a.device."""
    if a.device != "cuda":
        return TRAIN_SHAPES
    return {"gpt2-small": CUDA_TRAIN_SHAPES["gpt2-small"]} if a.quick else CUDA_TRAIN_SHAPES


def trainer_overrides(a) -> tuple[str, ...]:
    """train.py's command-line overrides for a.device and a.precision (always explicit: speed's settings follow it)."""
    if a.device == "cuda":
        return "trainer=gpu", f"trainer.precision={a.precision}"
    return (f"trainer.precision={a.precision}",)


def device_sync(a):
    """What ends a timed step: waiting for the GPU's queued work (nothing to wait for on a CPU)."""
    import torch

    return torch.cuda.synchronize if a.device == "cuda" else (lambda: None)


def warmup_steps(a) -> int:
    return 3 if a.device == "cuda" else 1  # a GPU's first steps also tune kernels and grow the allocator's cache


def train_setup(a) -> None:
    """On a GPU, fp32 matmuls in TF32 as train.py sets them (no effect on a CPU, so nothing is set there)."""
    import torch

    if a.device == "cuda":
        torch.set_float32_matmul_precision("high")


def autocast(a):
    """The forward pass's context: bf16 autocast for bf16-mixed (as Lightning's precision plugin does), else none."""
    import torch

    if a.precision == "bf16-mixed":
        return torch.autocast(a.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_dict(shape: str) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(shape).model, resolve=True)
    return cfg | {"vocab_size": 50257, "qkv_bias": True, "tie_weights": True}  # GPT-2's own choices, as HF has them


def hf_model(cfg: dict, tuned: bool = False):
    """GPT2LMHeadModel of our shape: HF's defaults, or tuned with GPT-2's own tanh GELU (which ours computes)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"], n_embd=cfg["emb_dim"],
        n_layer=cfg["n_layers"], n_head=cfg["n_heads"], resid_pdrop=cfg["drop_rate"], embd_pdrop=cfg["drop_rate"],
        attn_pdrop=cfg["drop_rate"], tie_word_embeddings=True,
        **({"activation_function": "gelu_pytorch_tanh"} if tuned else {}),
    ))


def hf_state_dict(model) -> dict:
    """Our GPTModel's weights in GPT2LMHeadModel's layout (Conv1D stores its weight transposed)."""
    import torch

    sd = {"transformer.wte.weight": model.tok_emb.weight, "transformer.wpe.weight": model.pos_emb.weight,
          "transformer.ln_f.weight": model.final_norm.scale, "transformer.ln_f.bias": model.final_norm.shift}
    for i, b in enumerate(model.trf_blocks):
        p, a = f"transformer.h.{i}.", b.att
        sd |= {
            p + "ln_1.weight": b.norm1.scale, p + "ln_1.bias": b.norm1.shift,
            p + "ln_2.weight": b.norm2.scale, p + "ln_2.bias": b.norm2.shift,
            p + "attn.c_attn.weight": torch.cat([a.W_query.weight, a.W_key.weight, a.W_value.weight]).T,
            p + "attn.c_attn.bias": torch.cat([a.W_query.bias, a.W_key.bias, a.W_value.bias]),
            p + "attn.c_proj.weight": a.out_proj.weight.T, p + "attn.c_proj.bias": a.out_proj.bias,
            p + "mlp.c_fc.weight": b.ff.layers[0].weight.T, p + "mlp.c_fc.bias": b.ff.layers[0].bias,
            p + "mlp.c_proj.weight": b.ff.layers[2].weight.T, p + "mlp.c_proj.bias": b.ff.layers[2].bias,
        }
    return {k: v.detach().contiguous() for k, v in sd.items()}


def train_flops_per_token(cfg: dict, seq_len: int) -> float:
    """6 x (matmul parameters) + 12 x layers x T x C for attention (PaLM's count); the head is a matmul."""
    C, L = cfg["emb_dim"], cfg["n_layers"]
    return 6 * (L * 12 * C * C + cfg["vocab_size"] * C) + 12 * L * seq_len * C


def timed_steps(step, warmup: int, steps: int, sync=lambda: None) -> list[float]:
    """Seconds of each of ``steps`` calls after ``warmup`` untimed ones; ``sync`` waits for a GPU's queued work."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- measurements, one per process


def measure_peaks(a) -> dict:
    """Matmul GFLOP/s (fp32, square), copy bandwidth (bytes read per second) and read-only bandwidth (a sum)."""
    import torch

    if a.device == "cuda":
        return measure_cuda_peaks(a)
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    mm = statistics.median(timed_steps(lambda: x @ y, 2, a.repeats))
    src = torch.randn(64 * 2**20)  # 256 MB: far beyond the caches
    dst = torch.empty_like(src)
    cp = statistics.median(timed_steps(lambda: dst.copy_(src), 2, a.repeats))
    rd = statistics.median(timed_steps(lambda: src.sum(), 2, a.repeats))  # read only, on every thread
    return {"matmul_gflops": 2 * n**3 / mm / 1e9, "copy_gbs": src.numel() * 4 / cp / 1e9,
            "read_gbs": src.numel() * 4 / rd / 1e9}


def measure_cuda_peaks(a) -> dict:
    """The GPU's bf16 and TF32 matmul TFLOP/s (8192^3, median of 10 calls of 10 matmuls) and its copy bandwidth
    (bytes read per second, 256 MB); matmul_gflops is a.precision's peak, the one MFU is measured against."""
    import torch

    torch.set_float32_matmul_precision("high")  # fp32 matmuls in TF32, as train.py runs them
    n, reps, sync = 8192, 10, torch.cuda.synchronize
    out = {"gpu": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability()))}

    def tflops(dtype) -> float:
        x, y = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)

        def matmuls():
            for _ in range(reps):
                x @ y

        return 2 * n**3 * reps / statistics.median(timed_steps(matmuls, 3, 10, sync)) / 1e12

    out |= {"bf16_tflops": tflops(torch.bfloat16), "tf32_tflops": tflops(torch.float32)}
    src = torch.randn(64 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    cp = statistics.median(timed_steps(lambda: dst.copy_(src), 3, 10, sync))
    peak = out["bf16_tflops"] if a.precision == "bf16-mixed" else out["tf32_tflops"]
    return out | {"matmul_gflops": peak * 1e3, "copy_gbs": src.numel() * 4 / cp / 1e9}


def optimizer_step(model, opt, loss) -> None:
    """The rest of a plain-loop training step, the same for every model compared: backward, clip, AdamW."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def plain_loop(a, model, loss) -> dict:
    """Time a plain-loop training step of ``model`` (already on a.device): ``loss(x, y)`` under a.precision's
    autocast, then optimizer_step with fused AdamW; the batch is random ids made on the device."""
    import torch

    train_setup(a)
    B, T = train_shapes(a)[a.shape]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # after the model moved: its state goes there
    x, y = (torch.randint(0, 50257, (B, T), device=a.device) for _ in range(2))

    def step():
        with autocast(a):
            value = loss(x, y)
        optimizer_step(model, opt, value)

    return {"step_s": statistics.median(timed_steps(step, warmup_steps(a), a.steps, device_sync(a))), "tokens": B * T}


def measure_train_plain(a) -> dict:
    """Our model in a plain loop, with the step train.py runs on a.device: its speed.* (loss chunk, compiled
    blocks), fused AdamW, gradient clipping."""
    from gpt.loss import chunked_next_token_loss, next_token_loss
    from gpt.model import GPTConfig, GPTModel

    speed = compose(a.shape, trainer_overrides(a)).speed
    model = GPTModel(GPTConfig(**model_dict(a.shape))).to(a.device).train()
    if speed.compile:
        for block in model.trf_blocks:
            block.compile()
    if speed.loss_chunk is None:
        return plain_loop(a, model, lambda x, y: next_token_loss(model(x), y))
    return plain_loop(a, model, lambda x, y: chunked_next_token_loss(model.hidden_states(x), model.out_head.weight,
                                                                     y, speed.loss_chunk))


def measure_train_hf(a) -> dict:
    """GPT2LMHeadModel in the same plain loop (its default attention, full logits + cross-entropy); a.impl "tuned":
    with gelu_pytorch_tanh and use_cache=False."""
    import torch.nn.functional as F

    tuned = a.impl == "tuned"
    model = hf_model(model_dict(a.shape), tuned).to(a.device).train()
    kw = {"use_cache": False} if tuned else {}
    result = plain_loop(a, model, lambda x, y: F.cross_entropy(model(x, **kw).logits.flatten(0, 1), y.flatten()))
    return result | ({"attn": model.config._attn_implementation} if a.device == "cuda" else {})


def measure_train_lightning(a) -> dict:
    """train.py's path: TaskModule + TaskDataModule (pretraining on the KJV) + lightning.Trainer with conf/trainer/cpu.yaml
    (gpu.yaml on cuda, with a.precision), TensorBoard logging and the progress bar on; only validation and
    checkpoint files are off."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from omegaconf import OmegaConf

    from gpt.data.sources.kjv import KJV
    from gpt.tasks.pretrain import Pretrain
    from gpt.tokenizer import GPT2Tokenizer
    from gpt.training.datamodule import TaskDataModule
    from gpt.training.module import TaskModule

    train_setup(a)
    cfg, (B, T) = compose(a.shape, trainer_overrides(a)), train_shapes(a)[a.shape]
    sync, warmup = device_sync(a), warmup_steps(a)
    tokenizer = GPT2Tokenizer()
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    module = TaskModule(model_dict(a.shape), plain(cfg.optim), tokenizer.to_config(), plain(cfg.task),
                        plain(cfg.speed))
    times: list[float] = []

    class StepTimer(L.Callback):  # wall time between batch ends: data, forward, backward, optimizer, logging
        last = None

        def on_train_batch_end(self, *args):
            sync()
            now = time.perf_counter()
            if self.last is not None:
                times.append(now - self.last)
            self.last = now

    with tempfile.TemporaryDirectory() as tmp:
        settings = {"max_length": T, "stride": T, "val_ratio": 0.1, "cache_dir": tmp}
        data = TaskDataModule(Pretrain(), KJV(), tokenizer, settings, B, seed=0)
        trainer_cfg = plain(cfg.trainer) | {"max_steps": a.steps + warmup + 1, "limit_val_batches": 0, "devices": 1}
        trainer = L.Trainer(**trainer_cfg, logger=TensorBoardLogger(tmp), enable_checkpointing=False,
                            callbacks=[StepTimer()], enable_model_summary=False)
        trainer.fit(module, datamodule=data)
    return {"step_s": statistics.median(times[warmup:]), "tokens": B * T}


def measure_generate(a) -> dict:
    """Greedy decoding of a.new_tokens tokens after a 16-token prompt, gpt2-small shape, random fp32 weights shared
    by both libraries: naive (re-run the whole window each step), our KV cache (weights in a.dtype), HF
    generate(use_cache=True) without an eos check, as ours."""
    import torch

    from gpt.generation import generate
    from gpt.model import GPTConfig, GPTModel
    from gpt.quantize import for_decoding, weight_bytes

    torch.manual_seed(0)
    cfg = model_dict(GEN_SHAPE) | {"drop_rate": 0.0}
    ours = GPTModel(GPTConfig(**cfg)).to(a.device).eval()
    weights = weight_bytes(ours)
    prompt = torch.randint(0, 50257, (a.batch, GEN_PROMPT)).to(a.device)
    n = a.new_tokens
    if a.impl == "naive":

        class NoCache(torch.nn.Module):  # the same model without new_cache: generate() re-runs the window
            def __init__(self):
                super().__init__()
                self.m = ours

            def forward(self, idx):
                return self.m(idx)

        run = lambda: generate(NoCache(), prompt, n, cfg["context_length"])  # noqa: E731
    elif a.impl == "ours":
        ours = for_decoding(ours, a.dtype, a.device)
        weights = weight_bytes(ours)
        run = lambda: generate(ours, prompt, n, cfg["context_length"])  # noqa: E731
    else:
        hf = hf_model(cfg).to(a.device).eval()
        hf.load_state_dict(hf_state_dict(ours), strict=False)
        with torch.no_grad():  # the mapping is right: both give the same logits
            assert torch.allclose(hf(prompt).logits, ours(prompt), atol=1e-4)
        hf.generation_config.eos_token_id = None  # no eos check, as ours: every run makes n tokens
        run = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,  # noqa: E731
                                  do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        times = timed_steps(run, 1, a.repeats, device_sync(a))
        out = run()
    assert out.shape[1] == GEN_PROMPT + n
    # Bytes a cached step reads: every weight, plus the keys and values of every earlier position in every layer.
    kv_element = 2 if a.dtype == "bf16" else 4
    kv = sum(2 * cfg["n_layers"] * a.batch * (GEN_PROMPT + i) * cfg["emb_dim"] * kv_element for i in range(n))
    return {"s": statistics.median(times), "tokens": a.batch * n, "steps": n, "weight_bytes": weights,
            "bytes": weights * n + kv, "ids": out[0, GEN_PROMPT:].tolist()}


def measure_quality(a) -> dict:
    """A trained model (a.ckpt) in each dtype: perplexity on a.text, and its first 50 greedy tokens after the
    text's first 16 (compared with fp32's by the driver)."""
    import math

    import torch

    from gpt.tasks import load_model
    from gpt.evaluation import mean_next_token_loss
    from gpt.generation import generate
    from gpt.quantize import for_decoding

    model, tokenizer, _ = load_model(a.ckpt, None)
    model = for_decoding(model, a.dtype, a.device)
    ids = torch.tensor(tokenizer.encode(Path(a.text).read_text(encoding="utf-8")))
    ctx = model.cfg.context_length
    loss, n_tokens = mean_next_token_loss(model, ids, ctx, 8)
    greedy = generate(model, ids[None, :GEN_PROMPT], 50, ctx)[0, GEN_PROMPT:].tolist()
    return {"perplexity": math.exp(loss), "tokens_scored": n_tokens, "greedy": greedy}


def measure_data(a) -> dict:
    """Tokenizing the KJV (~4 MB) into the token cache, against tiktoken's batch encode of the same chunks."""
    import numpy as np

    from gpt.data.chunks import safe_chunks
    from gpt.data.encode import usable_cores
    from gpt.data.sources.kjv import KJV, kjv_text
    from gpt.data.tokens import CHUNK_CHARS, token_ids
    from gpt.tokenizer import GPT2Tokenizer

    text, tokenizer = kjv_text(), GPT2Tokenizer()
    mb = len(text.encode("utf-8")) / 1e6
    if a.impl == "raw":  # our chunks, encoded on one tiktoken thread per core; ids kept in memory
        chunks = list(safe_chunks(text, CHUNK_CHARS))
        encode = lambda: tokenizer.encoding.encode_ordinary_batch(chunks, num_threads=usable_cores())  # noqa: E731
        times = timed_steps(encode, 1, a.repeats)
        return {"mb_s": mb / statistics.median(times)}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats + 1):
            t0 = time.perf_counter()
            ids = token_ids(KJV(), tokenizer, Path(tmp) / str(r), progress=False)  # a fresh cache: no reuse
            times.append(time.perf_counter() - t0)
        assert np.array_equal(np.asarray(ids), tokenizer.encode(text)), "streamed ids differ from whole-text encode"
    return {"mb_s": mb / statistics.median(times[1:])}


MEASURES = {"peaks": measure_peaks, "train-plain": measure_train_plain, "train-hf": measure_train_hf,
            "train-lightning": measure_train_lightning, "generate": measure_generate, "data": measure_data,
            "quality": measure_quality}


# ---------------------------------------------------------------- the driver


def run_one(a, what: str, **kw) -> dict | None:
    """Run one measurement in a fresh python process; its result plus its peak RSS (None if it failed on a GPU)."""
    argv = [sys.executable, __file__, "--measure", what, "--threads", str(a.threads), "--steps", str(a.steps),
            "--repeats", str(a.repeats), "--new-tokens", str(a.new_tokens), "--device", a.device,
            "--precision", a.precision] + (["--quick"] if a.quick else [])
    for k, v in kw.items():  # later flags win: precision= here overrides a.precision
        argv += [f"--{k.replace('_', '-')}", str(v)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        if a.device != "cuda":
            sys.exit(f"error: measurement {what} {kw} failed:\n{done.stderr[-3000:]}")
        # One GPU session, one try: report the failure and measure the rest.
        print(f"  FAILED {what} {kw}:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  measured {what} {kw or ''}".rstrip(), file=sys.stderr, flush=True)
    return result


def interleaved(a, jobs: dict[str, tuple[str, dict]], rounds: int) -> dict[str, list[dict]]:
    """Each job (name -> (measurement, its arguments)) run ``rounds`` times, the jobs taking turns (A, B, A, B, ...);
    the results of every successful run, by job."""
    results: dict[str, list[dict]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, (what, kw) in jobs.items():
            r = run_one(a, what, **kw)
            if r is not None:
                results[name].append(r)
    return results


def spread(values: list[float], fmt: str) -> str:
    """The median, and the range over the rounds when there is more than one: '123 (110-130)'."""
    med = format(statistics.median(values), fmt)
    return med if len(values) == 1 else f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def cpu_peak_gflops(flags: set[str], mhz: float, cores: int) -> dict[str, float]:
    """Theoretical peaks, cores x FLOP/cycle x clock. FLOP/cycle per core from the flags, for two FMA units (2 FLOP
    each per lane): 16 fp32 lanes with AVX-512, 8 with AVX2. bf16: 1,024 with AMX, twice fp32 with AVX512-BF16
    dot products, else fp32's. An upper bound: a core that runs each 512-bit FMA as two halves (Zen 4) peaks at half
    the AVX-512 figure, which this reading of the flags cannot tell."""
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fp32 = cores * 2 * 2 * lanes * mhz / 1e3
    bf16 = cores * 1024 * mhz / 1e3 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32
    return {"32-true": fp32, "bf16-mixed": bf16}


def cpu_mhz() -> float:
    """The clock /proc/cpuinfo reports (in a VM, the nominal one); 0 where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return 0.0


def mfu(value: float) -> str:
    return f"{value:>4.0%}{'!' if value > 0.8 else ' '}"  # above 80%: suspect the peak, not the code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="3 steps, 2 repeats, 50 new tokens, 1 round: a smoke run (cuda: 10 steps, 3 repeats, 100 tokens)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per measurement (default 8)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of each generation / data / peak timing (5)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved runs of each compared process (3)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per prompt (200)")
    p.add_argument("--only", default="train,generate,data,quality", help="comma list of sections to run")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where training and generation run")
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                   help="training precision (default: 32-true on cpu, plus bf16-mixed rows with native bf16; "
                        "bf16-mixed on cuda)")
    p.add_argument("--ckpt", help="a trained checkpoint (file or run directory): quality of bf16 / int8 decoding")
    p.add_argument("--text", help="with --ckpt: the text its perplexity is measured on (one it was not trained on)")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    a = p.parse_args()
    cuda = a.device == "cuda"
    a.precision = a.precision or ("bf16-mixed" if cuda else "32-true")
    a.steps = a.steps or ((10 if cuda else 3) if a.quick else (20 if cuda else 8))
    a.repeats = a.repeats or ((3 if cuda else 2) if a.quick else 5)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.new_tokens = a.new_tokens or ((100 if cuda else 50) if a.quick else 200)
    if a.ckpt and not a.measure:
        if not a.text or not Path(a.text).is_file():
            sys.exit("error: --ckpt needs --text <a text file the model was not trained on>")
        a.ckpt, a.text = str(Path(a.ckpt).resolve()), str(Path(a.text).resolve())

    if a.measure:  # inside a measuring process
        import torch

        torch.set_num_threads(a.threads)
        result = MEASURES[a.measure](a)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if cuda:
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(result))
        return

    import torch

    from gpt.hardware import cpu_info, describe_cpu, native_bf16

    sections = set(a.only.split(","))
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device")
    model_name, flags = cpu_info()
    bf16_cpu = not cuda and native_bf16(flags) is not None
    where = f"cuda, precision {a.precision}" if cuda else f"{a.threads} threads, {os.cpu_count()} cores"
    print(f"# bench: torch {torch.__version__}, {where}, steps={a.steps} repeats={a.repeats} rounds={a.rounds} "
          f"new_tokens={a.new_tokens}{' (quick)' if a.quick else ''}")
    print(f"cpu: {describe_cpu(model_name, flags)}; {cpu_mhz():.0f} MHz")
    peaks = run_one(a, "peaks")
    if peaks is None:  # cuda only (a CPU failure exits): nothing to compare against
        sys.exit("error: the GPU peak measurement failed")
    if cuda:
        print(f"machine: {peaks['gpu']} (sm {peaks['capability']}): bf16 matmul peak {peaks['bf16_tflops']:.0f} "
              f"TFLOP/s, tf32 {peaks['tf32_tflops']:.0f} TFLOP/s (8192^3), copy bandwidth "
              f"{peaks['copy_gbs']:.0f} GB/s (256 MB); MFU against the {'bf16' if a.precision == 'bf16-mixed' else 'tf32'}"
              " matmul measured")
        peak_gflops = {a.precision: peaks["matmul_gflops"]}
    else:
        peak_gflops = cpu_peak_gflops(flags, cpu_mhz(), a.threads)
        print(f"machine: fp32 matmul {peaks['matmul_gflops']:.0f} GFLOP/s measured (2048^3); theoretical peak "
              f"{peak_gflops['32-true']:.0f} GFLOP/s fp32, {peak_gflops['bf16-mixed']:.0f} bf16 ({a.threads} cores x "
              f"FLOP/cycle from the flags x clock; MFU is against it); read bandwidth {peaks['read_gbs']:.1f} GB/s, "
              f"copy {peaks['copy_gbs']:.1f} GB/s (256 MB)")
    memory = (lambda r: f"{r['peak_gpu_mb']:>6.0f} MB") if cuda else (lambda r: f"{r['peak_rss_mb']:>6.0f} MB")

    if "train" in sections:
        train_section(a, peak_gflops, memory, bf16_cpu)
    if "generate" in sections:
        generate_section(a, peaks, memory, bf16_cpu)
    if "data" in sections and not cuda:
        data_section(a)
    if "quality" in sections and a.ckpt:
        quality_section(a, bf16_cpu)


def train_section(a, peak_gflops: dict, memory, bf16_cpu: bool) -> None:
    cuda = a.device == "cuda"
    shapes = train_shapes(a)
    print(f"\ntraining tokens/s ({'cuda' if cuda else 'cpu'}, median step; median (range) over {a.rounds} round(s))"
          "     tokens/s                vs HF   MFU    peak mem")
    print("  shapes (batch x tokens): " + ", ".join(f"{k} {B} x {T}" for k, (B, T) in shapes.items()))
    chunk = compose("tiny", trainer_overrides(a)).speed.loss_chunk
    rows = [("lightning", "train-lightning", {}, f"ours, Lightning (train.py path), {a.precision}"),
            ("plain", "train-plain", {}, f"ours, plain loop, {a.precision}"),
            ("hf", "train-hf", {}, "HF GPT2LMHeadModel, defaults"),
            ("hf-tuned", "train-hf", {"impl": "tuned"}, "HF, gelu_pytorch_tanh + use_cache=False")]
    if bf16_cpu and a.precision != "bf16-mixed":  # what precision=auto picks on this CPU
        rows += [("lightning-bf16", "train-lightning", {"precision": "bf16-mixed"}, "ours, Lightning, bf16-mixed"),
                 ("plain-bf16", "train-plain", {"precision": "bf16-mixed"}, "ours, plain loop, bf16-mixed")]
    print(f"  ours: chunked loss (the head and cross-entropy {chunk or 'all'} tokens at a time, speed.loss_chunk); "
          "HF: full logits + F.cross_entropy")
    for shape, (B, T) in shapes.items():
        flops = train_flops_per_token(model_dict(shape), T)
        jobs = {name: (what, kw | {"shape": shape}) for name, what, kw, _ in rows}
        results = interleaved(a, jobs, a.rounds)
        tps = {name: [r["tokens"] / r["step_s"] for r in rs] for name, rs in results.items()}
        hf = statistics.median(tps["hf"]) if tps["hf"] else None
        for name, _, kw, label in rows:
            if not tps[name]:
                print(f"  {shape:<10} {label:<44}   FAILED (its error is above)")
                continue
            med = statistics.median(tps[name])
            peak = peak_gflops.get(kw.get("precision", a.precision), next(iter(peak_gflops.values())))
            vs_hf = f"{med / hf:>5.2f}x" if hf else "    ?x"
            print(f"  {shape:<10} {label:<44} {spread(tps[name], '.0f'):<22} {vs_hf}  "
                  f"{mfu(med * flops / (peak * 1e9))}  {memory(results[name][-1])}")
        for fast, slow, what in (("lightning", "plain", "Lightning / plain loop"),
                                 ("lightning-bf16", "lightning", "Lightning bf16-mixed / fp32")):
            if tps.get(fast) and tps.get(slow):
                ratio = [f / s for f, s in zip(tps[fast], tps[slow])]  # round by round: same minute of the machine
                print(f"  {shape:<10} {what}: {spread(ratio, '.3f')}")


def generate_section(a, peaks: dict, memory, bf16_cpu: bool) -> None:
    cuda = a.device == "cuda"
    print(f"\ngeneration, {GEN_SHAPE} shape, greedy, {a.new_tokens} new tokens after {GEN_PROMPT}; median (range) "
          f"over {a.rounds} round(s)          tokens/s         GB/s read   {'peak GPU mem' if cuda else 'peak RSS'}")
    print("  GB/s: weights once per step plus the KV cache's keys and values (not for the naive re-forward)")
    dtypes = ["fp32"] + (["bf16"] if bf16_cpu or cuda else []) + ([] if cuda else ["int8"])
    for batch in (1, 8):
        jobs = {"ours": ("generate", {"impl": "ours", "batch": batch}),
                "hf": ("generate", {"impl": "hf", "batch": batch})}
        jobs |= {f"ours-{d}": ("generate", {"impl": "ours", "batch": batch, "dtype": d}) for d in dtypes[1:]}
        results = interleaved(a, jobs, a.rounds)
        # naive at batch 1 only, one round: minutes on a CPU; on a GPU (short of time) only without --quick
        if batch == 1 and not (cuda and a.quick):
            naive = {"impl": "naive", "batch": 1, "repeats": 1}  # one timed run after a warm-up: minutes each
            results["naive"] = interleaved(a, {"naive": ("generate", naive)}, 1)["naive"]
        tps = {k: [r["tokens"] / r["s"] for r in rs] for k, rs in results.items() if rs}
        labels = [("naive", "naive re-forward, fp32"), ("ours", "ours, KV cache, fp32"),
                  *((f"ours-{d}", f"ours, KV cache, {d}") for d in dtypes[1:]), ("hf", "HF generate, fp32")]
        for name, label in labels:
            if name not in results:
                continue
            if name not in tps:
                print(f"  batch {batch}  {label:<28}   FAILED (its error is above)")
                continue
            gbs = [r["bytes"] / r["s"] / 1e9 for r in results[name]]
            bw = "" if name == "naive" else spread(gbs, ".1f")
            print(f"  batch {batch}  {label:<28} {spread(tps[name], '.1f'):<18} {bw:<16} {memory(results[name][-1])}")
        if "ours" in tps and "hf" in tps:
            ratio = [o / h for o, h in zip(tps["ours"], tps["hf"])]
            same = "same" if results["ours"][-1]["ids"] == results["hf"][-1]["ids"] else "DIFFERENT"
            extra = f", cache / naive {statistics.median(tps['ours']) / tps['naive'][0]:.1f}x" if "naive" in tps else ""
            print(f"  batch {batch}  ours / HF, fp32: {spread(ratio, '.2f')}x{extra}; greedy tokens ours vs HF: {same}")
            for d in dtypes[1:]:
                if f"ours-{d}" in tps:
                    low = [o / h for o, h in zip(tps[f"ours-{d}"], tps["hf"])]
                    print(f"  batch {batch}  ours {d} / HF fp32: {spread(low, '.2f')}x")
    read = f"read {peaks['read_gbs']:.1f} GB/s, " if "read_gbs" in peaks else ""
    print(f"  (machine bandwidth: {read}copy {peaks['copy_gbs']:.1f} GB/s)")


def data_section(a) -> None:
    results = interleaved(a, {"ours": ("data", {"impl": "ours"}), "raw": ("data", {"impl": "raw"})}, a.rounds)
    mbs = {k: [r["mb_s"] for r in rs] for k, rs in results.items()}
    print(f"\ndata prep, KJV (4.1 MB) -> token ids, median (range) over {a.rounds} round(s)          MB/s   peak RSS")
    print(f"  ours: cached_token_ids (streamed, to disk)            {spread(mbs['ours'], '.1f'):<18} "
          f"{results['ours'][-1]['peak_rss_mb']:>5.0f} MB")
    print(f"  raw tiktoken encode_ordinary_batch, our chunks,   "
          f"{os.cpu_count()} threads {spread(mbs['raw'], '.1f'):<18} {results['raw'][-1]['peak_rss_mb']:>5.0f} MB")
    ratio = [o / r for o, r in zip(mbs["ours"], mbs["raw"])]
    print(f"  ours / raw {spread(ratio, '.2f')}x")


def quality_section(a, bf16_cpu: bool) -> None:
    dtypes = ["fp32"] + (["bf16"] if bf16_cpu or a.device == "cuda" else []) + ["int8"] * (a.device == "cpu")
    results = {d: run_one(a, "quality", dtype=d, ckpt=a.ckpt, text=a.text) for d in dtypes}
    ref = results["fp32"]
    print(f"\nquality, {Path(a.ckpt).name} on {Path(a.text).name} ({ref['tokens_scored']} tokens scored)"
          "      perplexity   vs fp32   first 50 greedy tokens = fp32's")
    for d, r in results.items():
        if r is None:
            print(f"  {d:<5} FAILED (its error is above)")
            continue
        match = sum(x == y for x, y in zip(r["greedy"], ref["greedy"]))
        print(f"  {d:<5} {r['perplexity']:>12.2f}   {r['perplexity'] / ref['perplexity'] - 1:>+7.2%}   {match}/50")


if __name__ == "__main__":
    main()
