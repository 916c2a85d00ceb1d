"""Label texts with a fine-tuned classifier: python classify.py ckpt=<file or run dir> text="..."

Without text=, each line of stdin is one text. Prints label<TAB>probability<TAB>text per text. No Lightning.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors


def run(cfg: DictConfig) -> None:
    from gpt.tasks import load_for

    model, tokenizer, task = load_for("classify", hydra.utils.to_absolute_path(cfg.ckpt), None, cfg.device)
    texts = [cfg.text] if cfg.text is not None else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        label, probability = task.label(model, tokenizer, text)
        print(f"{label}\t{probability:.3f}\t{text}", flush=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="classify")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
