"""Tasks (pretrain, classify, instruct, or your own) and the one way every command turns a checkpoint back into a
model: the task stored in the checkpoint rebuilds its model. Imports no Lightning or Hydra."""

from __future__ import annotations

from pathlib import Path

import torch

from gpt.checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint
from gpt.errors import UserError
from gpt.lora import merge_lora
from gpt.model import GPTModel
from gpt.pretrained import load_pretrained
from gpt.registry import locate
from gpt.tasks.base import Task
from gpt.tokenizer import Tokenizer, load_tokenizer

# Checkpoints written before tasks were classes name their task only.
_BUILTIN = {"pretrain": "gpt.tasks.pretrain.Pretrain", "classify": "gpt.tasks.classify.Classify",
            "instruct": "gpt.tasks.instruct.Instruct"}


def task_from_config(settings: dict | None) -> Task:
    """The task of a ``task`` config (a dict with ``_target_``, or an older checkpoint's ``name``)."""
    settings = dict(settings or {"name": "pretrain"})
    target = settings.pop("_target_", None) or _BUILTIN.get(settings.get("name"))
    if target is None:
        raise UserError(f"task config {settings} names no task class; give task._target_=module.Class")
    cls = locate(target)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task._target_={target} is not a subclass of gpt.tasks.base.Task")
    return cls(_target_=target, **settings)


def load_trained(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPTModel, Tokenizer, Task]:
    """The model (in eval mode) of a checkpoint written by train.py, its tokenizer and its task. The task adapts
    the model as it did in training (a classifier's head, adapters); adapters are then merged into plain weights."""
    path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path, map_location=map_location)
    hparams = ckpt.get("hyper_parameters", {})
    if "model" not in hparams or "tokenizer" not in hparams:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py (no model/tokenizer hyperparameters)")
    task = task_from_config(hparams.get("task"))
    with torch.device(map_location):  # built where its weights were loaded: device=cuda gives a model on the GPU
        model = task.adapt(GPTModel.from_config(hparams["model"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        reason = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{path}: its weights do not fit the model its hyperparameters describe ({reason})") from e
    merge_lora(model)
    # A new head, or merged adapters, leave the head untied: say so, so that a model rebuilt from cfg matches.
    model.cfg.tie_weights = model.out_head.weight is model.tok_emb.weight
    return model.eval(), load_tokenizer(hparams["tokenizer"]), task


def load_model(
    ckpt: str | Path | None, pretrained: str | Path | None, map_location: str | torch.device = "cpu"
) -> tuple[GPTModel, Tokenizer, Task]:
    """Exactly one of: a checkpoint of ours (file or run directory), or GPT-2 weights (hub id or directory), which
    are a pretrained language model."""
    if (ckpt is None) == (pretrained is None):
        raise UserError("give exactly one of ckpt=<checkpoint file or run directory> or pretrained=<hub id or directory>")
    if ckpt is not None:
        return load_trained(ckpt, map_location)
    return *load_pretrained(pretrained, map_location), task_from_config(None)


def load_for(command: str, ckpt: str | None, pretrained: str | None, device: str = "cpu") -> tuple[GPTModel, Tokenizer, Task]:
    """``load_model`` for an entry point, refusing a checkpoint whose task that command cannot use."""
    model, tokenizer, task = load_model(ckpt, pretrained, map_location=device)
    task.check_command(command, ckpt or pretrained)
    return model, tokenizer, task


def initial_weights(init_from: str) -> tuple[GPTModel, Tokenizer]:
    """The language model a run starts from (``init_from``): a checkpoint of ours (a .ckpt file or a run directory),
    or GPT-2 weights (a Hugging Face directory with config.json, or a hub id)."""
    path = Path(init_from)
    if path.is_file() or (path.is_dir() and not (path / "config.json").is_file()):
        model, tokenizer, task = load_trained(path)
    else:
        model, tokenizer, task = load_model(None, init_from)
    if "generate" not in task.loaded_by:
        raise UserError(f"init_from={init_from} is a {task.name} model; start from a language model checkpoint instead")
    return model, tokenizer
