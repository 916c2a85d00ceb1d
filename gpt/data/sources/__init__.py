"""Where text comes from. Each source is one file here and one YAML file in conf/data/ that names it by
``_target_``; a new source is a new file of your own (see README, "Extending"), no edit here.

A text source (for pretraining) is any object with ``documents()``, the corpus as an iterator of documents;
labeled sources (``rows()``) and instruction sources (``records()``) feed the fine-tuning tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from gpt.errors import UserError

DOC_SEPARATOR = " <|endoftext|> "  # between documents, as GPT-2 was trained: the model learns where they end


class CorpusError(UserError):
    """The corpus cannot be read or is unusable; the message says which file and what to do."""


class TextSource(Protocol):
    def documents(self) -> Iterator[str]: ...


def corpus_text(source: TextSource) -> str:
    """The whole corpus as one string: the documents joined by ``DOC_SEPARATOR``."""
    text = DOC_SEPARATOR.join(source.documents())
    if not text.strip():
        raise CorpusError(f"{source} holds no text")
    return text


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file, with errors that name the file when it is missing, binary, not UTF-8 or empty."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist; set data.path to a UTF-8 text file")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise CorpusError(f"corpus file {path} is binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"corpus file {path} is not UTF-8 (invalid byte at offset {e.start}); convert it, e.g. with iconv"
        ) from None
    if not text.strip():
        raise CorpusError(f"corpus file {path} is empty; give a file with text in it")
    return text
