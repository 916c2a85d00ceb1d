"""What a task does to a GPTModel before it trains: a new head for classification, LoRA adapters, frozen parts.

``task`` is the plain ``task`` config stored in checkpoints, so training and loading build the same model. Pure torch.
"""

from __future__ import annotations

from gpt.finetune.classification import replace_head, set_trainable
from gpt.finetune.lora import apply_lora
from gpt.model import GPTModel


def adapt_model(model: GPTModel, task: dict) -> GPTModel:
    """classify: a ``len(task['labels'])``-way head, then ``task['trainable']`` chooses what trains. With
    ``task['lora']['rank'] > 0`` every Linear layer (the new head included) gets an adapter and only adapters train."""
    if task["name"] == "classify":
        replace_head(model, len(task["labels"]))
    lora = task.get("lora") or {}
    if lora.get("rank"):
        apply_lora(model, lora["rank"], lora["alpha"])
    elif task["name"] == "classify":
        set_trainable(model, task["trainable"])
    return model
