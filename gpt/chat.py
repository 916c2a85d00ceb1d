"""A multi-turn chat with an instruction-tuned model in the terminal: each message is wrapped in the Alpaca template
the model was tuned with, the reply streams as it is generated (whole characters only) until <|endoftext|>, and
earlier turns stay in the context (their last ``context_length`` tokens). ``/reset`` forgets them, ``/exit`` (or end
of input) ends. ``<|endoftext|>`` typed in a message is plain text unless ``allow_special``.

Pure torch; reads lines from any iterable and writes through a function, so a script can drive it. The server
(gpt/server.py) builds its prompts with ``turn_ids`` / ``close_turn`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from gpt.data.sources.alpaca import format_input
from gpt.generation import generate_tokens
from gpt.tokenizer import StreamDecoder, Tokenizer


def turn_ids(tokenizer: Tokenizer, message: str, history: list[int], allow_special: bool = False) -> list[int]:
    """The ids the model continues to answer ``message``: the earlier turns, then the message in the Alpaca template.
    A typed <|endoftext|> stays text unless ``allow_special``: a user cannot forge the end of a turn."""
    return history + tokenizer.encode(format_input({"instruction": message}), allowed_special=allow_special)


def close_turn(tokenizer: Tokenizer, prompt: list[int], reply: list[int]) -> list[int]:
    """The history after a turn: its prompt, the reply and <|endoftext|>, as the model was tuned to end a response."""
    return prompt + reply + [tokenizer.eot_id]


def chat(
    model: nn.Module,
    tokenizer: Tokenizer,
    lines: Iterable[str],
    write: Callable[[str], None],
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    allow_special: bool = False,
    **sampling,
) -> None:
    """Answer each line of ``lines``; ``sampling`` holds temperature / top_k / top_p for ``generate_tokens``."""
    device = next(model.parameters()).device
    ctx = model.cfg.context_length
    history: list[int] = []  # token ids of the earlier turns: prompt, reply, <|endoftext|>, ...
    lines = iter(lines)
    write("Chat: type a message; /reset forgets the conversation, /exit ends it.\n")
    while True:
        write("you> ")
        line = next(lines, None)
        if line is None or line.strip() == "/exit":
            write("\nbye\n" if line is None else "bye\n")
            return
        message = line.strip()
        if message == "/reset":
            history = []
            write("(conversation forgotten)\n")
            continue
        if not message:
            continue
        ids = turn_ids(tokenizer, message, history, allow_special)
        write("assistant> ")
        text = StreamDecoder(tokenizer)
        stream = generate_tokens(model, torch.tensor([ids[-ctx:]], device=device), max_new_tokens, ctx,
                                 eos_id=tokenizer.eot_id, generator=generator, **sampling)
        for token in stream:
            if token.item() == tokenizer.eot_id:
                break
            if new := text.push(token.item()):
                write(new)
        write(text.flush() + "\n")
        history = close_turn(tokenizer, ids, text.ids)
