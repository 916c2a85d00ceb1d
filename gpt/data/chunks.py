"""Cutting a text into pieces that encode one by one to exactly the ids of the whole text, from a stream of text
that never has to be in memory whole."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def _safe_cut(text: str, i: int) -> int | None:
    """Where to cut ``text`` near the newline ``text[i]`` so that both sides encode to the ids they have in the
    whole text, or None. GPT-2's pre-tokeniser splits a run of whitespace before a non-space character into the run
    less its last character and that last character (which may join the next word, as in " the"): so cut after a
    lone newline ("x\n|y") or before the last character of a longer run ("x\n|\ny", "x |\ny"). The book's
    word-level tokenizers drop whitespace, so any of these cuts is safe for them too. The decision looks at
    ``text[i-1 : i+2]`` only, so a cut found in a prefix of a stream is the one found in the whole text."""
    if not 0 < i < len(text) - 1 or text[i + 1].isspace():
        return None
    return i if text[i - 1].isspace() else i + 1


def _first_cut(text: str, start: int) -> int | None:
    newline = text.find("\n", start)
    while newline != -1:
        cut = _safe_cut(text, newline)
        if cut is not None:
            return cut
        newline = text.find("\n", newline + 1)
    return None


def stream_safe_chunks(pieces: Iterable[str], size: int) -> Iterator[str]:
    """The text that ``pieces`` spell, re-cut into chunks of about ``size`` characters at safe cut points only
    (the first safe newline at least ``size`` characters into a chunk). Memory: a chunk plus one piece."""
    buffer, start, searched = "", 0, 0  # the chunk begins at buffer[start]; no safe cut before buffer[searched]
    for piece in pieces:
        buffer, start, searched = buffer[start:] + piece, 0, max(0, searched - start)
        while len(buffer) - start > size:
            # Resume the search 2 characters early: a newline there could not be judged before more text came.
            cut = _first_cut(buffer, max(start + size, searched - 2))
            if cut is None:
                searched = len(buffer)
                break
            yield buffer[start:cut]
            start = searched = cut
    if start < len(buffer):
        yield buffer[start:]


def safe_chunks(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters (see ``stream_safe_chunks``)."""
    return stream_safe_chunks([text], size)
