"""Sample text from a GPT: python generate.py ckpt=<file or run dir> | pretrained=<hub id or dir> prompt="..." [...]

With an instruction-tuned checkpoint: prompt= is an instruction (the reply is printed), chat=true chats.

Imports neither Lightning nor transformers, so it starts in about the time torch takes to import.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors


def run(cfg: DictConfig) -> None:
    import torch

    from gpt.chat import chat
    from gpt.checkpoint import load_model
    from gpt.finetune.instruction import format_input
    from gpt.generation import check_sampling, generate_tokens
    from gpt.quantize import check_dtype, for_decoding, weight_bytes

    if cfg.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {cfg.max_new_tokens}")
    if not cfg.chat and not cfg.prompt:
        raise ValueError('prompt is empty; give some text to continue, e.g. prompt="And God said"')
    check_dtype(cfg.dtype, cfg.device)
    ckpt = cfg.ckpt and hydra.utils.to_absolute_path(cfg.ckpt)
    model, tokenizer, task = load_model(ckpt, cfg.pretrained, map_location=cfg.device)
    if task["name"] == "classify":
        raise ValueError(f"{cfg.ckpt} is a classifier: label texts with python classify.py ckpt={cfg.ckpt} text=...")
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p, model.cfg.vocab_size)
    model = for_decoding(model, cfg.dtype, cfg.device)
    print(f"[model: {weight_bytes(model) / 1e6:.1f} MB of weights in {cfg.dtype}]", file=sys.stderr)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    if cfg.chat:
        write = lambda text: print(text, end="", flush=True)  # noqa: E731
        chat(model, tokenizer, sys.stdin, write, cfg.max_new_tokens, generator, **sampling)
        return

    instruct = task["name"] == "instruct"  # the prompt is an instruction: wrap it, print only the response
    ctx = model.cfg.context_length
    ids = tokenizer.encode(format_input({"instruction": cfg.prompt}) if instruct else cfg.prompt)
    ids = ids[-ctx:]  # a prompt longer than the context keeps its last tokens
    if max(ids) >= model.cfg.vocab_size:
        raise ValueError(f"the prompt has token id {max(ids)}, beyond the model's {model.cfg.vocab_size} tokens")
    if not instruct:
        print(tokenizer.decode(ids), end="", flush=True)
    stream = generate_tokens(
        model,
        torch.tensor([ids], device=cfg.device),
        cfg.max_new_tokens,
        ctx,
        eos_id=tokenizer.eot_id,
        generator=generator,
        **sampling,
    )
    for token in stream:
        if token.item() == tokenizer.eot_id:
            break
        print(tokenizer.decode([token.item()]), end="", flush=True)
    print()


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
