"""One UTF-8 text file as the corpus (data=text_file data.path=my_book.txt), streamed: never read whole."""

from __future__ import annotations

from collections.abc import Iterator

from gpt.data.files import TextFilePart
from gpt.data.sources import CorpusError, read_text_file


class TextFile:
    def __init__(self, path: str | None):
        if not path:
            raise CorpusError("data=text_file needs data.path; e.g. data.path=my_corpus.txt")
        self.path = path

    def parts(self) -> list[TextFilePart]:
        return [TextFilePart(self.path)]

    def documents(self) -> Iterator[str]:
        yield read_text_file(self.path)

    def __str__(self) -> str:
        return self.path
