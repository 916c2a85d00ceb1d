"""A UTF-8 text file read as a stream of pieces, checked as it goes, and recognised without being read whole."""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from gpt.data.sources import CorpusError

BLOCK_BYTES = 1 << 20  # read 1 MB at a time
SAMPLE_BYTES = 1 << 16  # a fingerprint hashes three 64 KB samples: the start, the middle and the end


def fingerprint(path: Path) -> dict:
    """What identifies a file's content without reading it whole: its path, size, modification time and a hash of
    three samples. A file edited in place keeps neither its mtime nor (usually) its samples."""
    st = path.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, st.st_size // 2 - SAMPLE_BYTES // 2), max(0, st.st_size - SAMPLE_BYTES)}):
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": h.hexdigest()}


class TextFilePart:
    """One UTF-8 text file as a part of a corpus: ``pieces()`` streams its text, errors name the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CorpusError(f"corpus file {self.path} does not exist; set data.path to a UTF-8 text file")

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size

    def fingerprint(self) -> dict:
        return fingerprint(self.path)

    def pieces(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset, blank = 0, True
        with open(self.path, "rb") as f:
            while block := f.read(BLOCK_BYTES):
                if b"\x00" in block:
                    raise CorpusError(f"corpus file {self.path} is binary (it contains NUL bytes); "
                                      "give a UTF-8 text file")
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as e:
                    raise CorpusError(f"corpus file {self.path} is not UTF-8 (invalid byte near offset "
                                      f"{offset + e.start}); "
                                      "convert it, e.g. with iconv") from None
                offset += len(block)
                blank = blank and not text.strip()
                yield text
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorpusError(f"corpus file {self.path} is not UTF-8 (it ends inside a character); "
                              "convert it, e.g. with iconv") from None
        if blank:
            raise CorpusError(f"corpus file {self.path} is empty; give a file with text in it")

    def __str__(self) -> str:
        return os.fspath(self.path)
