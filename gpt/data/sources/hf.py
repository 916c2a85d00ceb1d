"""A Hugging Face dataset through the ``datasets`` library (pip install 'gpt-from-scratch[hf]'): a local folder of
JSONL, Parquet or Arrow files (one cache shard per file), or a hub id when online (one per dataset shard), read
in streaming mode: python train.py data=hf data.path=<folder or hub id> [data.text_field=text]."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gpt.data.files import fingerprint
from gpt.data.sources import CorpusError, joined_documents
from gpt.data.sources.jsonl import find_files, record_text

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise CorpusError("data=hf needs the 'datasets' package: pip install 'gpt-from-scratch[hf]' "
                          "(or pip install datasets); data=jsonl reads JSONL without it") from None
    return datasets


class HFPart:
    """One data file of a local dataset, or one shard of a hub dataset: its records' texts joined as documents."""

    def __init__(self, source: HFDataset, file: Path | None = None, shard: int = 0, shards: int = 1):
        self.source, self.file, self.shard, self.shards = source, file, shard, shards
        self.nbytes = file.stat().st_size if file else None

    def fingerprint(self) -> dict:
        s = self.source
        where = fingerprint(self.file) if self.file else {"hub": s.path, "name": s.name, "revision": s.revision,
                                                           "split": s.split, "shard": self.shard, "of": self.shards}
        return {**where, "text_field": s.text_field}

    def _records(self):
        if self.file:
            return _datasets().load_dataset(BUILDERS[self.file.suffix], data_files=[str(self.file)], split="train",
                                            streaming=True)
        return self.source.hub_dataset().shard(num_shards=self.shards, index=self.shard)

    def texts(self) -> Iterator[str]:
        for n, record in enumerate(self._records()):
            yield record_text(record, self.source.text_field, f"{self} record {n}")

    def pieces(self) -> Iterator[str]:
        return joined_documents(self.texts())

    def __str__(self) -> str:
        return str(self.file) if self.file else f"{self.source.path} shard {self.shard}/{self.shards}"


class HFDataset:
    def __init__(self, path: str | None, text_field: str = "text", name: str | None = None, split: str = "train",
                 revision: str | None = None):
        if not path:
            raise CorpusError("data=hf needs data.path: a folder of JSONL/Parquet/Arrow files or a hub id")
        self.path, self.text_field, self.name, self.split, self.revision = path, text_field, name, split, revision

    def hub_dataset(self):
        try:
            return _datasets().load_dataset(self.path, self.name, split=self.split, revision=self.revision,
                                            streaming=True)
        except (OSError, ValueError, ConnectionError) as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorpusError(f"cannot load the dataset {self.path!r} from the hub ({message}); "
                              "give a local folder or check the id and the connection") from None

    def parts(self) -> list[HFPart]:
        _datasets()
        if Path(self.path).exists():
            return [HFPart(self, f) for f in find_files(self.path, tuple(BUILDERS), "JSONL/Parquet/Arrow")]
        shards = self.hub_dataset().num_shards
        return [HFPart(self, shard=k, shards=shards) for k in range(shards)]

    def documents(self) -> Iterator[str]:
        for part in self.parts():
            yield from part.texts()

    def __str__(self) -> str:
        return self.path
