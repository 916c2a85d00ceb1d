"""Label texts with a fine-tuned classifier: python classify.py ckpt=<file or run dir> text="..."

Without text=, each line of stdin is one text; <|endoftext|> in a text is plain text unless allow_special=true.
Prints label<TAB>probability<TAB>text per text. No Lightning.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors


def run(cfg: DictConfig) -> None:
    from gpt.checks import check_text
    from gpt.tasks import load_for

    model, tokenizer, task = load_for("classify", hydra.utils.to_absolute_path(cfg.ckpt), None, cfg.device)
    if cfg.text is not None:
        texts = [check_text("text", cfg.text)]
    else:
        sys.stdin.reconfigure(errors="replace")  # a line that is not UTF-8 is read with U+FFFD, not fatal
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        label, probability = task.label(model, tokenizer, text, cfg.allow_special)
        print(f"{label}\t{probability:.3f}\t{text}", flush=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="classify")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
