"""Where text comes from. Each source is one file here and one YAML file in conf/data/ that names it by
``_target_``; a new source is a new file of your own (see README, "Extending"), no edit here.

A text source (for pretraining) is any object with ``documents()``, the corpus as an iterator of documents. A source
that can be larger than memory also has ``parts()``: its corpus as parts (a file, a shard of a dataset), each
streamed in pieces and recognised by a fingerprint, so the token cache (gpt/data/tokens.py) encodes each part once,
into its own shard, without ever holding the text whole. Labeled sources (``rows()``) and instruction sources
(``records()``) feed the fine-tuning tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from gpt.errors import UserError

DOC_SEPARATOR = " <|endoftext|> "  # between documents, as GPT-2 was trained: the model learns where they end


class CorpusError(UserError):
    """The corpus cannot be read or is unusable; the message says which file and what to do."""


class TextSource(Protocol):
    def documents(self) -> Iterator[str]: ...


class Part(Protocol):
    """A piece of a corpus: one or more documents (joined by ``DOC_SEPARATOR``) streamed in ``pieces()``."""

    nbytes: int | None  # about how many bytes of text it holds (None: unknown): for the progress bar

    def fingerprint(self) -> dict: ...  # changes whenever its text does; cheap (no full read)

    def pieces(self) -> Iterator[str]: ...


class InMemoryPart:
    """A document already in memory (a small source with only ``documents()``): fingerprinted by its hash."""

    def __init__(self, text: str, name: str):
        self.text, self.name, self.nbytes = text, name, len(text)

    def fingerprint(self) -> dict:
        return {"sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest()}

    def pieces(self) -> Iterator[str]:
        yield self.text

    def __str__(self) -> str:
        return self.name


def parts_of(source: TextSource) -> list[Part]:
    """The source's parts: its own ``parts()``, or one in-memory part per document."""
    if hasattr(source, "parts"):
        parts = list(source.parts())
    else:
        parts = [InMemoryPart(doc, f"{source} (document {i})") for i, doc in enumerate(source.documents())]
    if not parts:
        raise CorpusError(f"{source} holds no text")
    return parts


def joined_documents(documents: Iterable[str]) -> Iterator[str]:
    """Documents as one stream of text, ``DOC_SEPARATOR`` between them (a part that holds several)."""
    for i, doc in enumerate(documents):
        if i:
            yield DOC_SEPARATOR
        yield doc


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
