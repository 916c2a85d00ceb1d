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


def is_rank_zero() -> bool:
    """False in every process but the first, whoever started them: Lightning's ddp relaunch (LOCAL_RANK, NODE_RANK),
    torchrun (RANK, GROUP_RANK) or srun (SLURM_PROCID)."""
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def trainer_arguments(cfg: DictConfig) -> dict:
    """cfg.trainer as lightning.Trainer's arguments; a strategy given as a ``_target_`` (trainer=fsdp) becomes the object."""
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    if isinstance(args.get("strategy"), dict):
        args["strategy"] = hydra.utils.instantiate(cfg.trainer.strategy)
    return args


def check_sweep_can_run(trainer) -> None:
    """Under -m, strategy=ddp (or fsdp) would start its extra processes by re-running this script's command line, which
    is the whole sweep: they would run other jobs than rank 0 and hang. ddp_spawn forks them from inside the job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    relaunches = isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    if relaunches and not trainer.strategy.cluster_environment.creates_processes_externally:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise ValueError(
                "a -m sweep cannot start its processes by re-running the command line (trainer.strategy=ddp); "
                "add trainer.strategy=ddp_spawn, or start every process yourself (srun, torchrun)"
            )


def train(cfg: DictConfig) -> None:
    import lightning as L
    import torch
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from gpt.corpus import load_corpus
    from gpt.data import GPTDataModule, per_device_batch_size
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
    )
    trainer = L.Trainer(
        **trainer_arguments(cfg),
        default_root_dir=run_dir,  # also where Lightning's SLURM requeue saves hpc_ckpt_*.ckpt and resumes from
        logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        callbacks=[
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="best", monitor="val/loss", mode="min", save_last=True
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
    )
    check_sweep_can_run(trainer)
    d = cfg.data
    batch_size = per_device_batch_size(d.batch_size, trainer.world_size)
    if trainer.is_global_zero:
        n_params = module.model.num_parameters()
        print(f"model: {n_params:,} parameters, {n_params * 4 / 2**20:.2f} MB in fp32")
        print(f"processes: {trainer.world_size}, batch: {d.batch_size} windows per step, {batch_size} per process")

    datamodule = GPTDataModule(
        text,
        tokenizer,
        d.max_length,
        d.stride,
        batch_size,
        d.val_ratio,
        d.num_workers,
        absolute(d.cache_dir),
        seed=cfg.seed,
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
    if not is_rank_zero():  # one run directory, one writer: the other processes keep Hydra's files out of it
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    main()
