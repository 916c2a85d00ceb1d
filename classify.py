"""Label texts with a fine-tuned classifier: python classify.py ckpt=<file or run dir> text="..."

Without text=, each line of stdin is one text; <|endoftext|> in a text is plain text unless allow_special=true.
Prints label<TAB>probability<TAB>text per text. No Lightning.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors
from gpt.errors import UserError


def run(cfg: DictConfig) -> None:
    import torch

    from gpt.checkpoint import load_trained
    from gpt.finetune.classification import last_token_logits

    model, tokenizer, task = load_trained(hydra.utils.to_absolute_path(cfg.ckpt), map_location=cfg.device)
    if task["name"] != "classify":
        raise UserError(f"{cfg.ckpt} is not a classifier (task {task['name']}); train one with task=classify")
    if cfg.text is not None and not isinstance(cfg.text, str):
        raise UserError(f"text={cfg.text} was read as a {type(cfg.text).__name__}, not text; quote it: "
                        f"'text=\"{cfg.text}\"'")
    sys.stdin.reconfigure(errors="replace")  # a line that is not UTF-8 is read with U+FFFD, not fatal
    texts = [cfg.text] if cfg.text is not None else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        ids = tokenizer.encode(text, cfg.allow_special)[: model.cfg.context_length] or [tokenizer.eot_id]
        with torch.no_grad():
            logits = last_token_logits(model(torch.tensor([ids], device=cfg.device)), torch.tensor([len(ids)]))
        probs = torch.softmax(logits[0], dim=-1)
        best = int(probs.argmax())
        print(f"{task['labels'][best]}\t{probs[best]:.3f}\t{text}", flush=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="classify")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
