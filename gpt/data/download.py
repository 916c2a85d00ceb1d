"""A data file given locally, or a recipe's public file fetched once and checked against its SHA-256."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from pathlib import Path

from gpt.errors import UserError


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(url: str, sha256: str, dest: Path, member: str | None = None) -> Path:
    """``dest``, downloaded from ``url`` once (``member`` of it when it is a zip) and checked against ``sha256``."""
    if not dest.is_file():
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        if member is not None:
            data = zipfile.ZipFile(io.BytesIO(data)).read(member)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    if sha256_of(dest) != sha256:
        raise UserError(f"{dest} (from {url}) does not have the expected SHA-256 {sha256}; delete it and retry")
    return dest


def data_file(path: str | None, url: str | None, sha256: str | None, member: str | None, cache_dir: str) -> Path:
    """A local ``path`` as given; without one, the recipe's public file, fetched into ``cache_dir``."""
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"data.path={path} does not exist")
        return Path(path)
    if url is None:
        raise UserError("this data recipe has no public source: give a local file with data.path=...")
    return fetch(url, sha256, Path(cache_dir) / (member or url.rsplit("/", 1)[-1]), member)


class DataFile:
    """A source backed by one file: ``path`` when given, else the recipe's ``url`` (fetched into ``cache_dir``)."""

    def __init__(self, path: str | None = None, url: str | None = None, sha256: str | None = None,
                 member: str | None = None, cache_dir: str = ".cache/data"):
        self.path, self.url, self.sha256, self.member, self.cache_dir = path, url, sha256, member, cache_dir

    def local_path(self) -> Path:
        return data_file(self.path, self.url, self.sha256, self.member, self.cache_dir)

    def __str__(self) -> str:
        return self.path or self.url or "?"
