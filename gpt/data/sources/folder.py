"""Every .txt file under a directory (recursively), or the files a glob matches, each one document
(data=folder data.path='texts/*.txt')."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

from gpt.data.files import TextFilePart
from gpt.data.sources import CorpusError, read_text_file


class Folder:
    def __init__(self, path: str | None):
        if not path:
            raise CorpusError("data=folder needs data.path; e.g. data.path='texts/*.txt' or a directory")
        self.path = path

    def files(self) -> list[Path]:
        """The files, sorted, so the corpus is the same whatever order the file system lists them in."""
        path = Path(self.path)
        found = sorted(path.rglob("*.txt")) if path.is_dir() else sorted(Path(p) for p in glob.glob(self.path))
        found = [f for f in found if f.is_file()]
        if not found:
            raise CorpusError(f"no .txt files found at {self.path}; set data.path to a directory or a glob like 'texts/*.txt'")
        return found

    def parts(self) -> list[TextFilePart]:
        """One part (one cache shard) per file, streamed."""
        return [TextFilePart(f) for f in self.files()]

    def documents(self) -> Iterator[str]:
        for f in self.files():
            yield read_text_file(f)

    def __str__(self) -> str:
        return self.path
