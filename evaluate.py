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

    from gpt.checkpoint import load_model
    from gpt.corpus import load_corpus
    from gpt.evaluation import mean_next_token_loss
    from gpt.quantize import check_dtype, for_decoding

    check_dtype(cfg.dtype, cfg.device)
    ckpt = cfg.ckpt and hydra.utils.to_absolute_path(cfg.ckpt)
    model, tokenizer, task = load_model(ckpt, cfg.pretrained, map_location=cfg.device)
    if task["name"] == "classify":
        raise ValueError(f"{cfg.ckpt} is a classifier; evaluate.py scores language models")
    model = for_decoding(model, cfg.dtype, cfg.device)  # the perplexity a sampler with this dtype= would see
    path = cfg.data.path and hydra.utils.to_absolute_path(cfg.data.path)
    text = load_corpus(cfg.data.source, path)
    ids = torch.tensor(tokenizer.encode(text), device=cfg.device)
    if len(ids) and int(ids.max()) >= model.cfg.vocab_size:
        raise ValueError(f"the text has token id {int(ids.max())}, beyond the model's {model.cfg.vocab_size} tokens")
    max_length = cfg.data.max_length or model.cfg.context_length
    if max_length > model.cfg.context_length:
        raise ValueError(f"data.max_length={max_length} is longer than the model's context {model.cfg.context_length}")
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
