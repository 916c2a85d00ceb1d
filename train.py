"""Pretrain a GPT: python train.py [group=option ...] [key=value ...]   (python train.py --cfg job shows the config)"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from gpt.cli import run_cli, user_errors


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
    return model


def check_config(cfg: DictConfig) -> None:
    """Settings that are wrong whatever the data: refused in a second, before Lightning is imported."""
    from gpt.model import GPTConfig

    GPTConfig(**{**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": cfg.model.vocab_size or 1})
    for name in ("max_length", "stride", "batch_size"):
        if cfg.data[name] <= 0:
            raise ValueError(f"data.{name} must be positive, got {cfg.data[name]}")
    if cfg.data.max_length > cfg.model.context_length:
        raise ValueError(
            f"data.max_length={cfg.data.max_length} is longer than model.context_length={cfg.model.context_length}; "
            "lower data.max_length or raise model.context_length"
        )
    if cfg.trainer.max_steps <= 0:
        raise ValueError(f"trainer.max_steps must be positive, got {cfg.trainer.max_steps}")
    if cfg.checkpoint.every_n_steps <= 0:
        raise ValueError(f"checkpoint.every_n_steps must be positive, got {cfg.checkpoint.every_n_steps}")


def resume_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: a file the user named, or with ``last`` this run directory's last.ckpt."""
    if ckpt_path != "last":
        return None if ckpt_path is None else Path(absolute(ckpt_path))
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    print(f"ckpt_path=last: no checkpoint in {run_dir} yet, starting from step 0")
    return None


def train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from gpt.checkpoint import check_same_model, read_checkpoint
    from gpt.corpus import load_corpus
    from gpt.tokenizer import build_tokenizer

    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt = resume_path(cfg.ckpt_path, run_dir)
    text = load_corpus(cfg.data.source, absolute(cfg.data.path))
    tokenizer = build_tokenizer(cfg.tokenizer.name, text)
    model = model_config(cfg, tokenizer.n_vocab)
    if ckpt is not None:
        saved = read_checkpoint(ckpt, mmap=True).get("hyper_parameters", {}).get("model", {})
        check_same_model(saved, model, ckpt)

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from gpt.checkpoint_io import AtomicCheckpointIO
    from gpt.data import GPTDataModule
    from gpt.module import GPTLightningModule, NonFiniteLossError

    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them; no effect on CPU
    module = GPTLightningModule(
        model=model,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=tokenizer.to_config(),
        sample=OmegaConf.to_container(cfg.sample, resolve=True),
    )
    n_params = module.model.num_parameters()
    print(f"model: {n_params:,} parameters, {n_params * 4 / 2**20:.2f} MB in fp32")

    d = cfg.data
    datamodule = GPTDataModule(
        text, tokenizer, d.max_length, d.stride, d.batch_size, d.val_ratio, d.num_workers, absolute(d.cache_dir),
        seed=cfg.seed,
    )
    checkpoints = run_dir / "checkpoints"
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        default_root_dir=run_dir,
        logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        callbacks=[
            ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/loss", mode="min"),
            # last.ckpt, what a crashed run resumes from: written every checkpoint.every_n_steps optimizer steps.
            ModelCheckpoint(
                dirpath=checkpoints, save_top_k=0, save_last=True, every_n_train_steps=cfg.checkpoint.every_n_steps
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
        plugins=[AtomicCheckpointIO()],
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except NonFiniteLossError as e:
        last = checkpoints / "last.ckpt"
        raise NonFiniteLossError(
            f"{e}; the last good checkpoint is {last}" if last.is_file() else f"{e}; no checkpoint was written yet"
        ) from e

    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path or checkpoints / "last.ckpt"
        sample = module.sample_text(cfg.sample.prompt, cfg.sample.max_new_tokens, seed=cfg.seed)
        print(f"\nsample: {sample!r}")
        print(f"val/loss: {trainer.callback_metrics.get('val/loss', float('nan')):.4f}")
        print(f"run directory: {run_dir}")
        print(f"TensorBoard:   tensorboard --logdir {run_dir / 'tensorboard'}")
        print(f"sample it:     python generate.py ckpt={best} prompt=\"{cfg.sample.prompt}\"")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with user_errors():
        train(cfg)


if __name__ == "__main__":
    run_cli(main)
