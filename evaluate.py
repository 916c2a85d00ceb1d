"""Loss and perplexity of a model on a text:
python evaluate.py ckpt=<file or run dir> | pretrained=<hub id or dir> data.path=<text file> [data.batch_size=8 ...]

Reuses the data config (source, path, max_length, batch_size); imports neither Lightning nor transformers.
"""

from __future__ import annotations

import math

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors


def run(cfg: DictConfig) -> None:
    import torch

    from gpt.checks import check_vocab, check_window
    from gpt.data.sources import corpus_text
    from gpt.evaluation import mean_next_token_loss
    from gpt.quantize import check_dtype, for_decoding
    from gpt.tasks import load_for

    check_dtype(cfg.dtype, cfg.device)
    ckpt = cfg.ckpt and hydra.utils.to_absolute_path(cfg.ckpt)
    model, tokenizer, task = load_for("evaluate", ckpt, cfg.pretrained, cfg.device)
    model = for_decoding(model, cfg.dtype, cfg.device)  # the perplexity a sampler with this dtype= would see
    text = corpus_text(hydra.utils.instantiate(cfg.data.source))
    # A corpus joins its documents with <|endoftext|> on purpose (DOC_SEPARATOR): allowed here.
    ids = torch.tensor(tokenizer.encode(text, allowed_special=True), device=cfg.device)
    if len(ids):
        check_vocab(int(ids.max()), model.cfg.vocab_size, "the text")
    max_length = cfg.data.max_length or model.cfg.context_length
    check_window(max_length, model.cfg.context_length)
    loss, n_tokens = mean_next_token_loss(model, ids, max_length, cfg.data.batch_size)
    print(f"loss: {loss:.4f}")
    print(f"perplexity: {math.exp(loss):.2f}")
    # Per character, so models with different tokenizers compare: total nats over the text, in bits, per character.
    print(f"bits per character: {loss * n_tokens / math.log(2) / len(text):.4f}")
    print(f"tokens: {n_tokens} (windows of {max_length})")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
