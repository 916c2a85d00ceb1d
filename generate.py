"""Sample text from a GPT: python generate.py ckpt=<file or run dir> | pretrained=<hub id or dir> prompt="..." [...]

Imports neither Lightning nor transformers, so it starts in about the time torch takes to import.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    import torch

    from gpt.checkpoint import load_model
    from gpt.generation import check_sampling, generate_tokens

    if not cfg.prompt:
        raise ValueError('prompt is empty; give some text to continue, e.g. prompt="And God said"')
    ckpt = cfg.ckpt and hydra.utils.to_absolute_path(cfg.ckpt)
    model, tokenizer = load_model(ckpt, cfg.pretrained, map_location=cfg.device)
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p, model.cfg.vocab_size)
    ctx = model.cfg.context_length
    ids = tokenizer.encode(cfg.prompt)[-ctx:]  # a prompt longer than the context keeps its last tokens
    if max(ids) >= model.cfg.vocab_size:
        raise ValueError(f"the prompt has token id {max(ids)}, beyond the model's {model.cfg.vocab_size} tokens")
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    print(tokenizer.decode(ids), end="", flush=True)
    stream = generate_tokens(
        model,
        torch.tensor([ids], device=cfg.device),
        cfg.max_new_tokens,
        ctx,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        eos_id=tokenizer.eot_id,
        generator=generator,
    )
    for token in stream:
        if token.item() == tokenizer.eot_id:
            break
        print(tokenizer.decode([token.item()]), end="", flush=True)
    print()


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
