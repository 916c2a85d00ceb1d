"""Pretrain a GPT: python train.py [group=option ...] [key=value ...]   (python train.py --cfg job shows the config)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def absolute(path: str | None) -> str | None:
    """Paths on the command line are relative to where the user ran the command."""
    return None if path is None else hydra.utils.to_absolute_path(path)


def model_config(cfg: DictConfig, n_vocab: int) -> dict:
    """The model's fields as plain values; vocab_size null means "the tokenizer's vocabulary size"."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["vocab_size"] = model["vocab_size"] or n_vocab
    if model["vocab_size"] < n_vocab:
        raise ValueError(
            f"model.vocab_size={model['vocab_size']} is smaller than the tokenizer's {n_vocab} tokens; "
            f"set model.vocab_size={n_vocab} (or null)"
        )
    if cfg.data.max_length > model["context_length"]:
        raise ValueError(
            f"data.max_length={cfg.data.max_length} is longer than model.context_length={model['context_length']}; "
            "lower data.max_length or raise model.context_length"
        )
    return model


def train(cfg: DictConfig) -> None:
    import lightning as L
    import torch
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from gpt.corpus import load_corpus
    from gpt.data import GPTDataModule
    from gpt.module import GPTLightningModule
    from gpt.tokenizer import build_tokenizer

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them; no effect on CPU

    text = load_corpus(cfg.data.source, absolute(cfg.data.path))
    tokenizer = build_tokenizer(cfg.tokenizer.name, text)
    module = GPTLightningModule(
        model=model_config(cfg, tokenizer.n_vocab),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=tokenizer.to_config(),
        sample=OmegaConf.to_container(cfg.sample, resolve=True),
        speed=OmegaConf.to_container(cfg.speed, resolve=True),
    )
    n_params = module.model.num_parameters()
    print(f"model: {n_params:,} parameters, {n_params * 4 / 2**20:.2f} MB in fp32")

    d = cfg.data
    datamodule = GPTDataModule(
        text, tokenizer, d.max_length, d.stride, d.batch_size, d.val_ratio, d.num_workers, absolute(d.cache_dir)
    )
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        default_root_dir=run_dir,
        logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        callbacks=[
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", mode="min", save_last=True
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=absolute(cfg.ckpt_path))

    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
        sample = module.sample_text(cfg.sample.prompt, cfg.sample.max_new_tokens, seed=cfg.seed)
        print(f"\nsample: {sample!r}")
        print(f"val/loss: {trainer.callback_metrics.get('val/loss', float('nan')):.4f}")
        print(f"run directory: {run_dir}")
        print(f"TensorBoard:   tensorboard --logdir {run_dir / 'tensorboard'}")
        print(f"sample it:     python generate.py ckpt={best} prompt=\"{cfg.sample.prompt}\"")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
