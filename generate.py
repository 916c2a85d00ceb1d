"""Sample text from a GPT: python generate.py ckpt=<file or run dir> | pretrained=<hub id or dir> prompt="..." [...]

With an instruction-tuned checkpoint: prompt= is an instruction (the reply is printed), chat=true chats.
<|endoftext|> typed in a prompt is plain text unless allow_special=true.

Imports neither Lightning nor transformers, so it starts in about the time torch takes to import.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors
from gpt.errors import UserError


def run(cfg: DictConfig) -> None:
    import torch

    from gpt.chat import chat
    from gpt.checks import check_text, check_vocab
    from gpt.generation import check_sampling, generate_tokens
    from gpt.quantize import check_dtype, for_decoding, weight_bytes
    from gpt.tasks import load_for
    from gpt.tokenizer import StreamDecoder

    if not isinstance(cfg.max_new_tokens, int) or cfg.max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {cfg.max_new_tokens!r}")
    prompt = check_text("prompt", cfg.prompt) if not cfg.chat else ""
    if not cfg.chat and not prompt:
        raise UserError('prompt is empty; give some text to continue, e.g. prompt="And God said"')
    check_dtype(cfg.dtype, cfg.device)
    ckpt = cfg.ckpt and hydra.utils.to_absolute_path(cfg.ckpt)
    model, tokenizer, task = load_for("generate", ckpt, cfg.pretrained, cfg.device)
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p, model.cfg.vocab_size)
    model = for_decoding(model, cfg.dtype, cfg.device)
    print(f"[model: {weight_bytes(model) / 1e6:.1f} MB of weights in {cfg.dtype}]", file=sys.stderr)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    if cfg.chat:
        if not task.chats:
            raise UserError(f"chat=true needs an instruction-tuned checkpoint (task=instruct); this is a {task.name} "
                            "model: give it a prompt= to continue instead")
        write = lambda text: print(text, end="", flush=True)  # noqa: E731
        sys.stdin.reconfigure(errors="replace")  # a line that is not UTF-8 is read with U+FFFD, not fatal
        chat(model, tokenizer, sys.stdin, write, cfg.max_new_tokens, generator, cfg.allow_special, **sampling)
        return

    text = task.prompt(prompt)  # an instruction model's template around it, if it has one
    ctx = model.cfg.context_length
    ids = tokenizer.encode(text, cfg.allow_special)[-ctx:]  # a prompt longer than the context keeps its last tokens
    check_vocab(max(ids), model.cfg.vocab_size, "the prompt")
    if text == prompt:  # a continuation: show the prompt it continues; an answer stands alone
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
    decoder = StreamDecoder(tokenizer)  # prints whole characters only, however the tokens split them
    for token in stream:
        if token.item() == tokenizer.eot_id:
            break
        print(decoder.push(token.item()), end="", flush=True)
    print(decoder.flush())


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
