"""Train a GPT: python train.py [task=pretrain|classify|instruct] [experiment=NAME] [debug=fast|overfit|profile|anomaly]
[group=option ...] [key=value ...]   (python train.py --cfg job shows the composed config)

This file only composes: the config picks every part (model, data source, task, callbacks, loggers, trainer) and
the objects do the work. The task (gpt/tasks/) says what is trained; gpt/training/ holds the Lightning glue.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # a time budget (budget_s) counts from here: start-up and tokenizer training included

import sys  # noqa: E402 (imports after STARTED, which they count in)
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from gpt.cli import is_rank_zero, run_cli, user_errors  # noqa: E402
from gpt.training.recipe import fill_auto  # noqa: E402
from gpt.training.setup import (  # noqa: E402
    check_config,
    check_same_run,
    check_sweep_can_run,
    instantiate_all,
    make_tokenizer,
    model_config,
    plain,
    resume_path,
    run_identity,
    start_from,
    time_budget,
    trainer_arguments,
)


def train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # Each job of a -m sweep has its own budget, from its own start.
    budget = time_budget(cfg, time.monotonic() if HydraConfig.get().mode == RunMode.MULTIRUN else STARTED)
    fill_auto(cfg)  # sizes a recipe leaves to the corpus and the budget (experiment=speedrun)
    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt = resume_path(cfg.ckpt_path, run_dir)

    import lightning as L
    import torch

    from gpt.checkpoint import check_same_model, read_checkpoint
    from gpt.hardware import keep_freed_memory
    from gpt.lora import count_trainable
    from gpt.tasks import task_from_config
    from gpt.training.callbacks import NonFiniteLossError
    from gpt.training.checkpoint_io import AtomicCheckpointIO
    from gpt.training.datamodule import TaskDataModule, per_device_batch_size
    from gpt.training.module import TaskModule
    from gpt.training.spawn import send_back_test_records

    trainer = L.Trainer(
        **trainer_arguments(cfg),
        default_root_dir=run_dir,  # also where Lightning's SLURM requeue saves hpc_ckpt_*.ckpt and resumes from
        logger=instantiate_all(cfg.logger) or False,
        callbacks=instantiate_all(cfg.callbacks),
        plugins=[AtomicCheckpointIO()],
    )
    check_sweep_can_run(trainer)
    send_back_test_records(trainer)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them; no effect on CPU
    keep_freed_memory()  # each step's large activations reused, not faulted in afresh (gpt/hardware.py)

    task = task_from_config(plain(cfg.task))
    state, tokenizer = start_from(cfg)
    source = hydra.utils.instantiate(cfg.data.source)
    tokenizer = tokenizer or make_tokenizer(plain(cfg.tokenizer), source)
    task.check_tokenizer(tokenizer)
    data = {k: v for k, v in plain(cfg.data).items() if k != "source"}
    batch_size = per_device_batch_size(cfg.data.batch_size, trainer.world_size)
    datamodule = TaskDataModule(task, source, tokenizer, data, batch_size, cfg.seed)
    datamodule.setup()  # before the model: the data can decide its shape (a classifier's labels)
    module = TaskModule(model=model_config(cfg, tokenizer.n_vocab), optim=plain(cfg.optim),
                        tokenizer=tokenizer.to_config(), task=task.to_config(), speed=plain(cfg.speed),
                        base_state=state, time_budget=budget)
    module.run_identity = run_identity(cfg, module.hparams.model, trainer.world_size, datamodule.fingerprint())
    if ckpt is not None:
        saved = read_checkpoint(ckpt, mmap=True)
        check_same_model(saved.get("hyper_parameters", {}).get("model", {}), module.hparams.model, ckpt)
        check_same_run(saved.get("run_identity"), module.run_identity, list(cfg.resume.allow), ckpt)
    if trainer.is_global_zero:
        trainable, n_params = count_trainable(module.model)
        print(f"model: {n_params:,} parameters, {n_params * 4 / 2**20:.2f} MB in fp32; {trainable:,} trainable")
        print(f"processes: {trainer.world_size}, batch: {cfg.data.batch_size} windows per step, {batch_size} per process")

    if task.validate_before_training and ckpt is None:
        before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        print("before training: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(before.items())))
    checkpoints = run_dir / "checkpoints"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except NonFiniteLossError as e:
        last = checkpoints / "last.ckpt"
        raise NonFiniteLossError(
            f"{e}; the last good checkpoint is {last}" if last.is_file() else f"{e}; no checkpoint was written yet"
        ) from e
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or str(checkpoints / "last.ckpt")
    if datamodule.splits.test is not None:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best if Path(best).is_file() else None,
                              verbose=False)
        metrics.update({k: float(v) for k, v in tested[0].items()})
    if not trainer.is_global_zero or trainer.fast_dev_run:
        return
    print(f"\nval/loss: {metrics.get('val/loss', float('nan')):.4f}")
    for line in module.task.report(metrics, module.test_records, run_dir, best):
        print(line)
    print(f"run directory: {run_dir}")
    if (run_dir / "tensorboard").is_dir():
        print(f"TensorBoard:   tensorboard --logdir {run_dir / 'tensorboard'}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with user_errors():
        train(cfg)


if __name__ == "__main__":
    if not is_rank_zero():  # one run directory, one writer: the other processes keep Hydra's files out of it
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    run_cli(main)
