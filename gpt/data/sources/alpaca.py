"""Instruction data in the Alpaca format (the book's chapter 7): a JSON list of {"instruction", "input", "output"}
records, and the prompt template a model tuned on them expects (also used by the chat). data=instruction."""

from __future__ import annotations

import json

from gpt.data.download import DataFile
from gpt.errors import UserError

RESPONSE_HEADER = "\n\n### Response:\n"


def format_input(entry: dict) -> str:
    """The Alpaca prompt: a preamble, the instruction, the input when there is one, and the response header."""
    text = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + RESPONSE_HEADER


def check_records(records: list, source: str) -> list[dict]:
    """Alpaca records: a list of objects with ``instruction`` and ``output`` (``input`` optional)."""
    if not isinstance(records, list) or not records:
        raise UserError(f"{source}: expected a non-empty JSON list of records")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"instruction", "output"} <= r.keys():
            raise UserError(f"{source}: record {i} has no instruction/output fields (Alpaca format expected)")
    return records


class AlpacaFile(DataFile):
    def records(self) -> list[dict]:
        path = self.local_path()
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}); give a JSON list of Alpaca records") from None
        return check_records(records, str(path))
