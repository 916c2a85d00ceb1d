"""Checks of settings that every entry point shares, written once. Pure Python: the messages name the config key."""

from __future__ import annotations

from gpt.errors import UserError


def check_positive(name: str, value: int | float) -> None:
    if value is None or value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def check_window(max_length: int, context_length: int) -> None:
    """A training or evaluation window must fit in the model's context."""
    if max_length > context_length:
        raise UserError(
            f"data.max_length={max_length} is longer than model.context_length={context_length}; "
            "lower data.max_length or raise model.context_length"
        )


def check_vocab(max_id: int, vocab_size: int, what: str) -> None:
    """Every token id must have a row in the model's embedding."""
    if max_id >= vocab_size:
        raise UserError(f"{what} has token id {max_id}, beyond the model's {vocab_size} tokens; use the tokenizer "
                         "the model was trained with")


def check_text(name: str, value: object) -> str:
    """A text setting as given. Hydra reads ``prompt=2024`` as a number and ``prompt=true`` as a boolean; those
    are refused with the way to say it as text, rather than turned into a text the user did not type."""
    if value is None:
        return ""
    if not isinstance(value, str):
        typed = str(value).lower() if isinstance(value, bool) else value
        raise UserError(f"{name}={typed} was read as a {type(value).__name__}, not text; quote it: '{name}=\"{typed}\"'")
    return value
