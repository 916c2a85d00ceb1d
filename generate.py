"""Sample text from a trained GPT: python generate.py ckpt=<file or run dir> prompt="..." [temperature=0 ...]

Imports neither Lightning nor transformers, so it starts in about the time torch takes to import.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors


def run(cfg: DictConfig) -> None:
    import torch

    from gpt.checkpoint import load_checkpoint
    from gpt.generation import check_sampling, generate_tokens

    if not cfg.prompt:
        raise ValueError('prompt is empty; give some text to continue, e.g. prompt="And God said"')
    if cfg.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {cfg.max_new_tokens}")
    model, tokenizer = load_checkpoint(hydra.utils.to_absolute_path(cfg.ckpt), map_location=cfg.device)
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p, model.cfg.vocab_size)
    ctx = model.cfg.context_length
    ids = tokenizer.encode(cfg.prompt)[-ctx:]  # a prompt longer than the context keeps its last tokens
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
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
