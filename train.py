"""Train a GPT: python train.py [task=pretrain|classify|instruct] [group=option ...] [key=value ...]

(python train.py --cfg job shows the config)
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from gpt.cli import is_rank_zero, run_cli, user_errors


def absolute(path: str | None) -> str | None:
    """Paths on the command line are relative to where the user ran the command."""
    return None if path is None else hydra.utils.to_absolute_path(path)


def absolute_or_hub_id(name: str) -> str:
    """A path relative to where the user ran the command if it exists there, else the name as given (a hub id)."""
    path = absolute(name)
    return path if Path(path).exists() else name


def model_config(cfg: DictConfig, n_vocab: int) -> dict:
    """The model's fields as plain values; vocab_size null means "the tokenizer's vocabulary size"."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["vocab_size"] = model["vocab_size"] or n_vocab
    if model["vocab_size"] < n_vocab:
        raise ValueError(
            f"model.vocab_size={model['vocab_size']} is smaller than the tokenizer's {n_vocab} tokens; "
            f"set model.vocab_size={n_vocab} (or null)"
        )
    check_window(cfg.data.max_length, model["context_length"])
    return model


def check_window(max_length: int, context_length: int) -> None:
    if max_length > context_length:
        raise ValueError(
            f"data.max_length={max_length} is longer than model.context_length={context_length}; "
            "lower data.max_length or raise model.context_length"
        )


def trainer_arguments(cfg: DictConfig) -> dict:
    """cfg.trainer as lightning.Trainer's arguments; a strategy given as a ``_target_`` (trainer=fsdp) becomes the object.
    trainer.precision=auto becomes this machine's precision, in cfg too, so that speed's settings follow it."""
    from gpt.hardware import resolve_precision

    cfg.trainer.precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if is_rank_zero():
        print(f"precision: {cfg.trainer.precision} ({why})")
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


def check_config(cfg: DictConfig) -> None:
    """Settings that are wrong whatever the data: refused in a second, before Lightning is imported."""
    from gpt.model import GPTConfig

    if cfg.init_from is None:  # with init_from the model's shape comes from the weights, checked once they load
        GPTConfig(**{**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": cfg.model.vocab_size or 1})
        check_window(cfg.data.max_length, cfg.model.context_length)
    for name in ("max_length", "stride", "batch_size"):
        if name in cfg.data and cfg.data[name] <= 0:
            raise ValueError(f"data.{name} must be positive, got {cfg.data[name]}")
    if cfg.trainer.max_steps <= 0:
        raise ValueError(f"trainer.max_steps must be positive, got {cfg.trainer.max_steps}")
    if cfg.checkpoint.every_n_steps <= 0:
        raise ValueError(f"checkpoint.every_n_steps must be positive, got {cfg.checkpoint.every_n_steps}")
    if cfg.task.name not in BUILDERS:
        raise ValueError(f"task.name must be one of {', '.join(BUILDERS)}, got {cfg.task.name!r}")


def resume_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: a file the user named, or with ``last`` the newest of this run directory's
    last.ckpt and the hpc_ckpt_*.ckpt Lightning saves when SLURM signals the end of a job's time."""
    if ckpt_path != "last":
        return None if ckpt_path is None else Path(absolute(ckpt_path))
    found = [p for p in (run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    print(f"ckpt_path=last: no checkpoint in {run_dir} yet, starting from step 0")
    return None


def model_overrides(overrides: list[str]) -> set[str]:
    """The model fields chosen on the command line: ``model.emb_dim=64`` names one, ``model=gpt2-small`` all."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "model":
            keys.add("*")
        elif key.startswith("model."):
            keys.add(key.removeprefix("model."))
    return keys


def pretrained_model_config(cfg: DictConfig, weights: dict, chosen: set[str]) -> dict:
    """init_from: the model's fields are the weights'. A value chosen on the command line must agree with them,
    except the fields that are not part of the weights (dropout, the attention kernel)."""
    model = dict(weights)
    for key in weights if "*" in chosen else chosen & set(weights):
        if key in ("drop_rate", "attn_impl"):
            model[key] = cfg.model[key]
        elif cfg.model.get(key) is not None and cfg.model[key] != weights[key]:
            raise ValueError(
                f"model.{key}={cfg.model[key]} conflicts with the weights of init_from={cfg.init_from}, which have "
                f"{key}={weights[key]}; drop that override (with init_from the model's shape comes from the weights)"
            )
    return model


def start_from(cfg: DictConfig):
    """(state_dict, tokenizer) of ``init_from``, after giving cfg.model the weights' shape; (None, None) for random
    weights. ``init_from`` is a checkpoint of ours (.ckpt or run directory) or GPT-2 weights (hub id or directory)."""
    if cfg.init_from is None:
        return None, None
    from hydra.core.hydra_config import HydraConfig

    from gpt.checkpoint import initial_weights

    if cfg.ckpt_path:
        raise ValueError("give init_from (start from trained weights) or ckpt_path (resume a run), not both")
    model, tokenizer = initial_weights(absolute_or_hub_id(cfg.init_from))
    chosen = model_overrides(HydraConfig.get().overrides.task)
    with open_dict(cfg):  # data.max_length etc. now follow the weights' context length
        cfg.model = pretrained_model_config(cfg, model.cfg.to_dict(), chosen)
    print(f"starting from {cfg.init_from}")
    return model.state_dict(), tokenizer


def build_pretrain(cfg: DictConfig, world_size: int):
    from gpt.corpus import load_corpus
    from gpt.data import GPTDataModule, per_device_batch_size
    from gpt.module import GPTLightningModule
    from gpt.tokenizer import build_tokenizer

    state, tokenizer = start_from(cfg)
    text = load_corpus(cfg.data.source, absolute(cfg.data.path))
    tokenizer = tokenizer or build_tokenizer(cfg.tokenizer.name, text)
    module = GPTLightningModule(
        model=model_config(cfg, tokenizer.n_vocab),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        tokenizer=tokenizer.to_config(),
        sample=OmegaConf.to_container(cfg.sample, resolve=True),
        speed=OmegaConf.to_container(cfg.speed, resolve=True),
    )
    if state is not None:
        module.model.load_state_dict(state)
    d = cfg.data
    datamodule = GPTDataModule(
        text,
        tokenizer,
        d.max_length,
        d.stride,
        per_device_batch_size(d.batch_size, world_size),
        d.val_ratio,
        d.num_workers,
        absolute(d.cache_dir),
        seed=cfg.seed,
    )
    return module, datamodule


def finetune_start(cfg: DictConfig):
    """What classify and instruct share: the starting weights, a tokenizer with <|endoftext|>, the data file."""
    from gpt.finetune.data import data_file
    from gpt.tokenizer import build_tokenizer

    state, tokenizer = start_from(cfg)
    tokenizer = tokenizer or build_tokenizer(cfg.tokenizer.name, "")
    if tokenizer.eot_id is None:
        raise ValueError(f"fine-tuning needs a tokenizer with <|endoftext|> (tokenizer=gpt2), not {tokenizer.name}")
    d = cfg.data
    path = data_file(absolute(d.path), d.url, d.sha256, d.member, absolute(d.cache_dir))
    common = dict(model=model_config(cfg, tokenizer.n_vocab), optim=OmegaConf.to_container(cfg.optim, resolve=True),
                  tokenizer=tokenizer.to_config(), base_state=state)
    return tokenizer, path, common


def build_classify(cfg: DictConfig, world_size: int):
    from gpt.data import per_device_batch_size
    from gpt.finetune.classification import balance, read_labeled
    from gpt.finetune.data import ClassificationDataModule
    from gpt.finetune.split import split
    from gpt.finetune.module import ClassifierModule

    tokenizer, path, common = finetune_start(cfg)
    d = cfg.data
    rows = read_labeled(path)
    labels = list(d.labels) if d.labels is not None else sorted({label for _, label in rows})
    rows = balance(rows, cfg.seed) if d.balance else rows
    splits = split(rows, list(d.split), cfg.seed)
    print(f"{path.name}: {len(rows)} texts, labels {labels}; train/val/test {[len(s) for s in splits]}")
    task = {**OmegaConf.to_container(cfg.task, resolve=True), "labels": labels}
    module = ClassifierModule(task=task, **common)
    batch_size = per_device_batch_size(d.batch_size, world_size)
    datamodule = ClassificationDataModule(splits, tokenizer, labels, d.max_length, batch_size, d.num_workers)
    return module, datamodule


def build_instruct(cfg: DictConfig, world_size: int):
    import json

    from gpt.data import per_device_batch_size
    from gpt.finetune.data import InstructionDataModule
    from gpt.finetune.instruction import check_records
    from gpt.finetune.module import InstructModule
    from gpt.finetune.split import split

    tokenizer, path, common = finetune_start(cfg)
    d = cfg.data
    records = check_records(json.loads(path.read_text(encoding="utf-8")), str(path))
    splits = split(records, list(d.split), cfg.seed if d.shuffle else None)
    print(f"{path.name}: {len(records)} records; train/val/test {[len(s) for s in splits]}")
    module = InstructModule(task=OmegaConf.to_container(cfg.task, resolve=True), **common)
    batch_size = per_device_batch_size(d.batch_size, world_size)
    datamodule = InstructionDataModule(splits, tokenizer, d.max_length, cfg.task.mask_prompt, batch_size,
                                       d.num_workers)
    return module, datamodule


BUILDERS = {"pretrain": build_pretrain, "classify": build_classify, "instruct": build_instruct}


def train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from gpt.checkpoint import check_same_model, read_checkpoint

    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt = resume_path(cfg.ckpt_path, run_dir)

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from gpt.checkpoint_io import AtomicCheckpointIO
    from gpt.finetune.lora import count_trainable
    from gpt.module import NonFiniteLossError

    checkpoints = run_dir / "checkpoints"
    trainer = L.Trainer(
        **trainer_arguments(cfg),
        default_root_dir=run_dir,  # also where Lightning's SLURM requeue saves hpc_ckpt_*.ckpt and resumes from
        logger=TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""),
        callbacks=[
            ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/loss", mode="min"),
            # last.ckpt, what a crashed run resumes from: written every checkpoint.every_n_steps optimizer steps.
            ModelCheckpoint(
                dirpath=checkpoints, save_top_k=0, save_last=True, every_n_train_steps=cfg.checkpoint.every_n_steps
            ),
        ],
        plugins=[AtomicCheckpointIO()],
    )
    check_sweep_can_run(trainer)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them; no effect on CPU
    task = cfg.task.name
    module, datamodule = BUILDERS[task](cfg, trainer.world_size)
    if ckpt is not None:
        saved = read_checkpoint(ckpt, mmap=True).get("hyper_parameters", {}).get("model", {})
        check_same_model(saved, module.hparams.model, ckpt)
    if trainer.is_global_zero:
        trainable, n_params = count_trainable(module.model)
        print(f"model: {n_params:,} parameters, {n_params * 4 / 2**20:.2f} MB in fp32; {trainable:,} trainable")
        per_process = cfg.data.batch_size // trainer.world_size
        print(f"processes: {trainer.world_size}, batch: {cfg.data.batch_size} windows per step, {per_process} per process")

    if task != "pretrain" and ckpt is None:
        before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        print("before fine-tuning: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(before.items())))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except NonFiniteLossError as e:
        last = checkpoints / "last.ckpt"
        raise NonFiniteLossError(
            f"{e}; the last good checkpoint is {last}" if last.is_file() else f"{e}; no checkpoint was written yet"
        ) from e
    best = trainer.checkpoint_callback.best_model_path or str(checkpoints / "last.ckpt")
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if task != "pretrain":
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return
    print(f"\nval/loss: {val.get('val/loss', float('nan')):.4f}")
    if task == "pretrain":
        sample = module.sample_text(cfg.sample.prompt, cfg.sample.max_new_tokens, seed=cfg.seed)
        print(f"sample: {sample!r}")
    elif task == "classify":
        print(f"val/acc: {val['val/acc']:.4f}  test/acc: {tested[0]['test/acc']:.4f}")
    else:
        print(f"test answers:  {module.responses_path}")
    print(f"run directory: {run_dir}")
    print(f"TensorBoard:   tensorboard --logdir {run_dir / 'tensorboard'}")
    if task == "pretrain":
        print(f"sample it:     python generate.py ckpt={best} prompt=\"{cfg.sample.prompt}\"")
    elif task == "classify":
        print(f"label texts:   python classify.py ckpt={best} text=\"...\"")
    else:
        print(f"chat with it:  python generate.py ckpt={best} chat=true")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with user_errors():
        train(cfg)


if __name__ == "__main__":
    if not is_rank_zero():  # one run directory, one writer: the other processes keep Hydra's files out of it
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    run_cli(main)
