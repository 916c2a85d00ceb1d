"""JSON Lines files, one document per line in a text field, without extra dependencies:
python train.py data=jsonl data.path='shards/*.jsonl' [data.text_field=text]. One cache shard per file."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from gpt.data.files import fingerprint
from gpt.data.sources import CorpusError, joined_documents


def record_text(record, text_field: str, where: str) -> str:
    """The text of one record, or an error naming the file, the line and the fields it does have."""
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise CorpusError(f"{where}: no text field {text_field!r} (found {fields}); set data.text_field")
    return record[text_field]


def find_files(path: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """The files under a directory (recursively) with one of ``suffixes``, or those a glob or path names; sorted."""
    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.suffix in suffixes)
    else:
        found = sorted(map(Path, glob.glob(path)))
    found = [f for f in found if f.is_file()]
    if not found:
        raise CorpusError(f"no {what} files found at {path}; set data.path to a directory, a file or a glob")
    return found


class JsonlPart:
    """One JSON Lines file: its records' texts joined as documents."""

    def __init__(self, path: Path, text_field: str):
        self.path, self.text_field = path, text_field
        self.nbytes = path.stat().st_size

    def fingerprint(self) -> dict:
        return {**fingerprint(self.path), "text_field": self.text_field}

    def texts(self) -> Iterator[str]:
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise CorpusError(f"{self.path}:{n} is not valid JSON ({e}); "
                                      "give one JSON object per line") from None
                yield record_text(record, self.text_field, f"{self.path}:{n}")

    def pieces(self) -> Iterator[str]:
        return joined_documents(self.texts())

    def __str__(self) -> str:
        return str(self.path)


class JsonlFiles:
    def __init__(self, path: str | None, text_field: str = "text"):
        if not path:
            raise CorpusError("data=jsonl needs data.path; e.g. data.path='shards/*.jsonl' or a directory")
        self.path, self.text_field = path, text_field

    def parts(self) -> list[JsonlPart]:
        return [JsonlPart(f, self.text_field) for f in find_files(self.path, (".jsonl",), ".jsonl")]

    def documents(self) -> Iterator[str]:
        for part in self.parts():
            yield from part.texts()

    def __str__(self) -> str:
        return self.path
