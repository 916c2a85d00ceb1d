"""Reading a trained model back from a training checkpoint, without Lightning (fast to import, safe to load)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from gpt.finetune.lora import merge_lora
from gpt.finetune.task import adapt_model
from gpt.model import GPTConfig, GPTModel
from gpt.pretrained import load_pretrained
from gpt.tokenizer import Tokenizer, load_tokenizer


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file as given, or for a run directory its best checkpoint (else its last)."""
    path = Path(path)
    if path.is_dir():
        for candidate in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt"):
            if (path / candidate).is_file():
                return path / candidate
        raise FileNotFoundError(f"no checkpoint in {path}: expected checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a .ckpt file or a run directory under outputs/")
    return path


def load_trained(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPTModel, Tokenizer, dict]:
    """The GPTModel (in eval mode), its tokenizer and its task config (``{"name": "pretrain"}`` for a pretrained
    model) from a checkpoint written by train.py. A fine-tuned model comes back with its task's head, and with any
    LoRA adapters merged into plain weights."""
    path = resolve_checkpoint(path)
    # weights_only: tensors and plain containers only, so a crafted file cannot run code while loading.
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds more than tensors and plain values; refusing to unpickle it (it could run "
                         "code). Checkpoints written by train.py never do") from e
    hparams = ckpt.get("hyper_parameters", {})
    if "model" not in hparams or "tokenizer" not in hparams:
        raise ValueError(f"{path} is not a checkpoint written by train.py (no model/tokenizer hyperparameters)")
    task = hparams.get("task") or {"name": "pretrain"}
    model = adapt_model(GPTModel(GPTConfig(**hparams["model"])), task)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    merge_lora(model)
    # A new head, or merged adapters, leave the head untied: say so, so that a model rebuilt from cfg matches.
    model.cfg.tie_weights = model.out_head.weight is model.tok_emb.weight
    return model.eval(), load_tokenizer(hparams["tokenizer"]), task


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPTModel, Tokenizer]:
    """The GPTModel (in eval mode) and the tokenizer stored in a checkpoint written by train.py."""
    model, tokenizer, _ = load_trained(path, map_location)
    return model, tokenizer


def load_model(
    ckpt: str | Path | None, pretrained: str | Path | None, map_location: str | torch.device = "cpu"
) -> tuple[GPTModel, Tokenizer, dict]:
    """Exactly one of: a checkpoint of ours (file or run directory), or pretrained GPT-2 weights (hub id or
    directory). Returns the model, its tokenizer and its task config (GPT-2 weights are a pretrained language model)."""
    if (ckpt is None) == (pretrained is None):
        raise ValueError("give exactly one of ckpt=<checkpoint file or run directory> or pretrained=<hub id or directory>")
    if ckpt is not None:
        return load_trained(ckpt, map_location)
    return *load_pretrained(pretrained, map_location), {"name": "pretrain"}


def initial_weights(init_from: str) -> tuple[GPTModel, Tokenizer]:
    """The language model a run starts from (``init_from``): a checkpoint of ours (a .ckpt file or a run directory),
    or GPT-2 weights (a Hugging Face directory with config.json, or a hub id)."""
    path = Path(init_from)
    if path.is_file() or (path.is_dir() and not (path / "config.json").is_file()):
        model, tokenizer, task = load_trained(path)
    else:
        model, tokenizer, task = load_model(None, init_from)
    if task["name"] == "classify":
        raise ValueError(f"init_from={init_from} is a classifier; start from a language model checkpoint instead")
    return model, tokenizer
