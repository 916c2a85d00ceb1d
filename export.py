"""Export a checkpoint to the Hugging Face GPT-2 layout: python export.py ckpt=<file or run dir> out=<directory>

The directory (config.json + model.safetensors) loads with transformers.GPT2LMHeadModel.from_pretrained and with
generate.py / evaluate.py pretrained=<directory>. Only GPT-2's architecture exports: model.tie_weights=true and
model.qkv_bias=true.
"""

from __future__ import annotations


import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors


def run(cfg: DictConfig) -> None:
    from gpt.pretrained import export_hf
    from gpt.tasks import load_for

    model, tokenizer, _ = load_for("generate", hydra.utils.to_absolute_path(cfg.ckpt), None)
    out = export_hf(model, tokenizer.to_config(), tokenizer.eot_id, hydra.utils.to_absolute_path(cfg.out))
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    print(f"load it:   transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})")
    print(f"sample it: python generate.py pretrained={out} prompt=\"...\"")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
