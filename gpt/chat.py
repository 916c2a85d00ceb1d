"""A multi-turn chat with an instruction-tuned model in the terminal: each message is wrapped in the Alpaca template
the model was tuned with, the reply streams token by token until <|endoftext|>, and earlier turns stay in the
context (their last ``context_length`` tokens). ``/reset`` forgets them, ``/exit`` (or end of input) ends.

Pure torch; reads lines from any iterable and writes through a function, so a script can drive it. The server
(gpt/server.py) builds its prompts with ``turn_ids`` / ``close_turn`` and streams text with ``TextStream`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from gpt.data.sources.alpaca import format_input
from gpt.generation import generate_tokens
from gpt.tokenizer import Tokenizer


def turn_ids(tokenizer: Tokenizer, message: str, history: list[int]) -> list[int]:
    """The ids the model continues to answer ``message``: the earlier turns, then the message in the Alpaca template."""
    return history + tokenizer.encode(format_input({"instruction": message}))


def close_turn(tokenizer: Tokenizer, prompt: list[int], reply: list[int]) -> list[int]:
    """The history after a turn: its prompt, the reply and <|endoftext|>, as the model was tuned to end a response."""
    return prompt + reply + [tokenizer.eot_id]


class TextStream:
    """Token ids in, text out as soon as it is whole: a character split across tokens (GPT-2's byte-level BPE
    does that to many non-ASCII characters) decodes to U+FFFD until its last byte arrives, so text that ends in
    U+FFFD is held back."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def push(self, token: int) -> str:
        """The text that ``token`` completes (often empty mid-character)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[len(self.shown) :], text
        return new


def chat(
    model: nn.Module,
    tokenizer: Tokenizer,
    lines: Iterable[str],
    write: Callable[[str], None],
    max_new_tokens: int,
    generator: torch.Generator | None = None,
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
        ids = turn_ids(tokenizer, message, history)
        write("assistant> ")
        text = TextStream(tokenizer)
        stream = generate_tokens(model, torch.tensor([ids[-ctx:]], device=device), max_new_tokens, ctx,
                                 eos_id=tokenizer.eot_id, generator=generator, **sampling)
        for token in stream:
            if token.item() == tokenizer.eot_id:
                break
            if new := text.push(token.item()):
                write(new)
        write("\n")
        history = close_turn(tokenizer, ids, text.ids)
