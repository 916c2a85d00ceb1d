"""Labeled texts for classification: a CSV with a header naming the columns text and label, or a TSV in the SMS
Spam Collection's layout (label<TAB>text, no header). data=sms_spam | labeled_text."""

from __future__ import annotations

import csv
from pathlib import Path

from gpt.data.download import DataFile
from gpt.errors import UserError


def read_labeled(path: str | Path) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV (text,label with a header) or a TSV in the SMS Spam Collection's layout
    (label<TAB>text, no header)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(f))
            if not rows or not {"text", "label"} <= rows[0].keys():
                raise UserError(f"{path}: expected a CSV with a header row naming the columns text and label")
            return [(r["text"], r["label"]) for r in rows]
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    bad = next((i for i, r in enumerate(rows, 1) if len(r) != 2), None)
    if bad is not None:
        raise UserError(f"{path}:{bad}: expected label<TAB>text")
    return [(text, label) for label, text in rows]


class LabeledFile(DataFile):
    def rows(self) -> list[tuple[str, str]]:
        return read_labeled(self.local_path())
