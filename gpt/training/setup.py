"""What train.py needs from the composed config before Lightning runs: checks, the Trainer's arguments, the
checkpoint to resume, the weights to start from and the tokenizer. Hydra stops here: below, plain values."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from gpt.checks import check_positive, check_window
from gpt.data.sources import corpus_text
from gpt.errors import UserError
from gpt.model import GPTConfig, check_fits
from gpt.optim import check_optimizer
from gpt.tokenizer import GPT2_VOCAB_SIZE, Tokenizer, build_tokenizer


def absolute(path: str | None) -> str | None:
    """Paths on the command line are relative to where the user ran the command."""
    return None if path is None else hydra.utils.to_absolute_path(path)


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def check_config(cfg: DictConfig) -> None:
    """Settings that are wrong whatever the data: refused in a second, before Lightning is imported."""
    if cfg.init_from is None:  # with init_from the model's shape comes from the weights, checked once they load
        shape = GPTConfig(**{**plain(cfg.model), "vocab_size": cfg.model.vocab_size or GPT2_VOCAB_SIZE})
        check_window(cfg.data.max_length, cfg.model.context_length)
        gpu = cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
        check_fits(shape, torch.device("cuda" if gpu else "cpu"))  # before any data is read
    for name in ("max_length", "stride", "batch_size"):
        if name in cfg.data:
            check_positive(f"data.{name}", cfg.data[name])
    if budget_seconds(cfg) is None:  # a time budget replaces max_steps
        check_positive("trainer.max_steps", cfg.trainer.max_steps)
    check_positive("checkpoint.every_n_steps", cfg.checkpoint.every_n_steps)
    strategy = cfg.trainer.get("strategy")
    check_optimizer(cfg.optim.name, str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else "",
                    cfg.optim.decay)


def model_config(cfg: DictConfig, n_vocab: int) -> dict:
    """The model's fields as plain values; vocab_size null means "the tokenizer's vocabulary size"."""
    model = plain(cfg.model)
    model["vocab_size"] = model["vocab_size"] or n_vocab
    if model["vocab_size"] < n_vocab:
        raise UserError(
            f"model.vocab_size={model['vocab_size']} is smaller than the tokenizer's {n_vocab} tokens; "
            f"set model.vocab_size={n_vocab} (or null)"
        )
    check_window(cfg.data.max_length, model["context_length"])
    return model


def instantiate_all(cfg: DictConfig | None) -> list:
    """The objects of a config group of named ``_target_`` entries (callbacks, loggers); a null entry is off."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if c is not None]


def budget_seconds(cfg: DictConfig) -> float | None:
    """The run's wall-clock budget: ``budget_s`` or Lightning's ``trainer.max_time`` ("[DD:]HH:MM:SS" or a dict of
    days/hours/minutes/seconds), or None."""
    max_time = cfg.trainer.get("max_time")
    if max_time is None:
        return None if cfg.get("budget_s") is None else float(cfg.budget_s)
    if cfg.get("budget_s") is not None:
        raise UserError("give budget_s or trainer.max_time, not both")
    if not isinstance(max_time, str):
        return timedelta(**plain(max_time)).total_seconds()
    try:
        fields = [float(f) for f in max_time.split(":")]
    except ValueError:
        fields = []
    if not 1 <= len(fields) <= 4:
        raise UserError(f"trainer.max_time={max_time!r} is not a duration; write DD:HH:MM:SS or HH:MM:SS, "
                         "e.g. trainer.max_time=00:05:00 (or budget_s=300)")
    return sum(f * unit for f, unit in zip(reversed(fields), (1, 60, 3600, 86400)))


# Kept back from a time budget for what follows training (the last checkpoint, the sample, exit): the whole command,
# start-up and tokenizer training included, ends within the budget.
BUDGET_RESERVE = 0.03


def time_budget(cfg: DictConfig, started: float):
    """A ``gpt.optim.TimeBudget`` counted from ``started`` (time.monotonic() at the process's start), or None."""
    from gpt.optim import TimeBudget

    seconds = budget_seconds(cfg)
    return None if seconds is None else TimeBudget(seconds, started, reserve_s=BUDGET_RESERVE * seconds)


def trainer_arguments(cfg: DictConfig) -> dict:
    """cfg.trainer as lightning.Trainer's arguments; a value given as a ``_target_`` (the fsdp strategy, a
    profiler) becomes the object. trainer.precision=auto becomes this machine's precision, in cfg too, so that
    speed's settings follow it. A time budget (budget_s, trainer.max_time) is ours, not Lightning's: it replaces
    max_steps, and the module stops on it (see gpt.optim.TimeBudget)."""
    from gpt.cli import is_rank_zero
    from gpt.hardware import resolve_precision

    cfg.trainer.precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if is_rank_zero():
        print(f"precision: {cfg.trainer.precision} ({why})")
    args = plain(cfg.trainer)
    if budget_seconds(cfg) is not None:
        args.pop("max_time", None)
        args["max_steps"] = -1
    for key, value in args.items():
        if isinstance(value, dict) and "_target_" in value:
            args[key] = hydra.utils.instantiate(cfg.trainer[key])
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
            raise UserError(
                "a -m sweep cannot start its processes by re-running the command line (trainer.strategy=ddp); "
                "add trainer.strategy=ddp_spawn, or start every process yourself (srun, torchrun)"
            )


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


# The model fields that are not part of the weights: they may differ from those of init_from's weights.
NOT_IN_WEIGHTS = ("drop_rate", "attn_impl", "scaled_init")


def pretrained_model_config(cfg: DictConfig, weights: dict, chosen: set[str]) -> dict:
    """init_from: the model's fields are the weights'. A value chosen on the command line must agree with them,
    except the fields that are not part of the weights."""
    model = dict(weights)
    for key in weights if "*" in chosen else chosen & set(weights):
        if key in NOT_IN_WEIGHTS:
            model[key] = cfg.model[key]
        elif cfg.model.get(key) is not None and cfg.model[key] != weights[key]:
            raise UserError(
                f"model.{key}={cfg.model[key]} conflicts with the weights of init_from={cfg.init_from}, which have "
                f"{key}={weights[key]}; drop that override (with init_from the model's shape comes from the weights)"
            )
    return model


def start_from(cfg: DictConfig) -> tuple[dict | None, Tokenizer | None]:
    """(state_dict, tokenizer) of ``init_from``, after giving cfg.model the weights' shape; (None, None) for random
    weights. ``init_from`` is a checkpoint of ours (.ckpt or run directory) or GPT-2 weights (hub id or directory)."""
    if cfg.init_from is None:
        return None, None
    from hydra.core.hydra_config import HydraConfig

    from gpt.tasks import initial_weights

    if cfg.ckpt_path:
        raise UserError("give init_from (start from trained weights) or ckpt_path (resume a run), not both")
    path = absolute(cfg.init_from)
    model, tokenizer = initial_weights(path if Path(path).exists() else cfg.init_from)  # else a hub id
    chosen = model_overrides(HydraConfig.get().overrides.task)
    with open_dict(cfg):  # data.max_length etc. now follow the weights' context length
        cfg.model = pretrained_model_config(cfg, model.cfg.to_dict(), chosen)
    print(f"starting from {cfg.init_from}")
    return model.state_dict(), tokenizer


def make_tokenizer(tokenizer: dict, source) -> Tokenizer:
    """GPT-2's BPE, or a tokenizer whose vocabulary is built from the source's text (word-level, char, or a BPE
    trained on it); ``tokenizer`` is the tokenizer config (conf/tokenizer/)."""
    name = tokenizer["name"]
    if name == "gpt2":
        return build_tokenizer(name)
    if not hasattr(source, "documents"):
        raise UserError(f"tokenizer={name} builds its vocabulary from a text corpus; {source} is not one "
                         "(use tokenizer=gpt2)")
    options = {k: v for k, v in tokenizer.items() if k in ("vocab_size", "cache_dir")}
    if "cache_dir" in options:
        options["cache_dir"] = absolute(options["cache_dir"])
    return build_tokenizer(name, corpus_text(source), **options)


# Data settings that do not change what is trained or in which order (the content itself is fingerprinted).
NOT_DATA_ORDER = ("source", "path", "cache_dir", "num_workers")


def run_identity(cfg: DictConfig, model: dict, world_size: int, data_fingerprint: str) -> dict:
    """What decides a run's data order and optimization, flat ("optim.lr" -> value): saved in every checkpoint, and
    compared on resume. trainer.max_steps is not part of it: a resumed run may train longer (README, Reliability)."""
    settings = {"seed": cfg.seed, "data.content": data_fingerprint, "trainer.processes": world_size,
                "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
                "trainer.gradient_clip_val": cfg.trainer.gradient_clip_val}
    settings.update({f"data.{k}": v for k, v in plain(cfg.data).items() if k not in NOT_DATA_ORDER})
    for group, values in (("optim", plain(cfg.optim)), ("model", model), ("task", plain(cfg.task))):
        settings.update({f"{group}.{k}": v for k, v in values.items()})
    return settings


def check_same_run(saved: dict | None, now: dict, allow: list[str], ckpt: Path) -> None:
    """Refuses to resume ``ckpt`` with other settings than it was trained with, except those in ``allow``
    (resume.allow). A checkpoint written before run identities were saved is not checked."""
    if saved is None:
        return
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k) and k not in allow)
    if changed:
        differences = "; ".join(f"{k}={saved.get(k)} there, {now.get(k)} here" for k in changed)
        raise UserError(
            f"checkpoint {ckpt} was trained with other settings: {differences}; resume with the checkpoint's "
            f"settings, or allow the change with resume.allow=[{','.join(changed)}]"
        )
