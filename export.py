"""Export a checkpoint to the Hugging Face GPT-2 layout: python export.py ckpt=<file or run dir> out=<directory>

The directory (config.json + model.safetensors) loads with transformers.GPT2LMHeadModel.from_pretrained and with
generate.py / evaluate.py pretrained=<directory>. Only GPT-2's architecture exports: model.tie_weights=true and
model.qkv_bias=true. A folder with anything in it is refused unless overwrite=true (which replaces it), and so is
any folder that holds the checkpoint being exported.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors
from gpt.errors import UserError


def run(cfg: DictConfig) -> None:
    from gpt.checkpoint import resolve_checkpoint
    from gpt.pretrained import export_hf
    from gpt.tasks import load_for

    ckpt = resolve_checkpoint(hydra.utils.to_absolute_path(str(cfg.ckpt))).resolve()
    out = Path(hydra.utils.to_absolute_path(str(cfg.out))).resolve()
    if out == ckpt or out in ckpt.parents:
        raise UserError(f"out={cfg.out} holds the checkpoint it would export ({ckpt}); choose a folder outside it")
    model, tokenizer, _ = load_for("generate", ckpt, None)
    out = export_hf(model, tokenizer.to_config(), tokenizer.eot_id, out, overwrite=cfg.overwrite)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    print(f"load it:   transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})")
    print(f"sample it: python generate.py pretrained={out} prompt=\"...\"")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
