import re

import numpy as np
import pytest
import torch

import gpt.data.encode
import gpt.data.tokens
from gpt.data.sources import CorpusError, corpus_text, read_text_file
from gpt.data.sources.folder import Folder
from gpt.data.sources.kjv import kjv_text
from gpt.data.chunks import safe_chunks
from gpt.data.shards import ShardedIds
from gpt.data.tokens import token_ids
from gpt.data.windows import GPTDataset, split_ids
from gpt.tasks.pretrain import Pretrain
from gpt.training.datamodule import TaskDataModule
from gpt.tokenizer import SimpleTokenizerV2


SETTINGS = dict(max_length=16, stride=16, val_ratio=0.2)


class InMemory:
    """A text source holding one document in memory."""

    def __init__(self, text: str):
        self.text = text

    def documents(self):
        yield self.text


def test_first_window_of_the_verdict(gpt2_tokenizer, shared_file, tmp_path):
    text = shared_file("the-verdict.txt").read_text(encoding="utf-8")
    ids = token_ids(InMemory(text), gpt2_tokenizer, tmp_path)
    x, y = GPTDataset(ids, max_length=4, stride=4)[0]
    assert x.tolist() == [40, 367, 2885, 1464]
    assert y.tolist() == [367, 2885, 1464, 1807]


@pytest.mark.parametrize("n, max_length, stride", [(50, 4, 1), (50, 4, 4), (50, 8, 3), (9, 8, 1), (8, 8, 1)])
def test_windows_are_the_books_sliding_windows(n, max_length, stride):
    ids = np.arange(n, dtype=np.uint16)
    ds = GPTDataset(ids, max_length, stride)
    starts = range(0, n - max_length, stride)  # the book's GPTDatasetV1 loop
    assert len(ds) == len(starts)
    for i, start in enumerate(starts):
        x, y = ds[i]
        assert x.dtype == torch.int64
        assert x.tolist() == list(range(start, start + max_length))
        assert y.tolist() == list(range(start + 1, start + max_length + 1))


def test_token_cache_is_compact_memory_mapped_and_reused(gpt2_tokenizer, tmp_path, monkeypatch):
    text = "In the beginning God created the heaven and the earth. " * 20
    ids = token_ids(InMemory(text), gpt2_tokenizer, tmp_path)
    (shard,) = ids._shards()
    assert isinstance(shard, np.memmap) and shard.dtype == np.uint16
    assert ids.tolist() == gpt2_tokenizer.encode(text, allowed_special=True)
    monkeypatch.setattr(gpt2_tokenizer, "encode", lambda _: pytest.fail("tokenized twice"))
    assert token_ids(InMemory(text), gpt2_tokenizer, tmp_path).tolist() == ids.tolist()
    assert len(list(tmp_path.glob("shards/*.npy"))) == 1


def test_token_cache_key_changes_with_text_and_tokenizer(gpt2_tokenizer, tmp_path):
    text = "the cat sat on the mat"
    token_ids(InMemory(text), gpt2_tokenizer, tmp_path)
    token_ids(InMemory(text + "."), gpt2_tokenizer, tmp_path)
    other = token_ids(InMemory(text), SimpleTokenizerV2.from_text(text), tmp_path)
    assert other.tolist() == [4, 0, 3, 2, 4, 1]  # sorted vocabulary: cat mat on sat the
    assert len(list(tmp_path.glob("shards/*.npy"))) == 3


def test_split_is_contiguous_and_val_is_the_tail():
    ids = np.arange(100)
    train, val = split_ids(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="val_ratio must be in"):
        split_ids(ids, 1.0)


def test_datamodule_shuffles_train_only_by_its_seed(gpt2_tokenizer, tmp_path):
    text = " ".join(str(i) for i in range(3000))

    def datamodule(seed: int) -> TaskDataModule:
        dm = TaskDataModule(Pretrain(), InMemory(text), gpt2_tokenizer, SETTINGS | {"cache_dir": tmp_path}, 4, seed)
        dm.setup("fit")
        return dm

    first = lambda loader: next(iter(loader))[0]  # noqa: E731
    dm = datamodule(seed=0)
    a = first(dm.train_dataloader())
    assert torch.equal(a, first(datamodule(seed=0).train_dataloader()))  # the order depends on the seed only
    assert not torch.equal(a, first(datamodule(seed=1).train_dataloader()))
    assert not torch.equal(a, torch.stack([dm.splits.train[i][0] for i in range(4)]))  # shuffled
    train = dm.train_dataloader()
    train.sampler.set_epoch(1)  # each epoch its own order, drawn from data seed + epoch (not the global RNG)
    assert not torch.equal(a, first(train))
    assert torch.equal(first(dm.val_dataloader()), first(dm.val_dataloader()))
    assert len(dm.splits.train.ids) + len(dm.splits.val.ids) == len(gpt2_tokenizer.encode(text, allowed_special=True))


def test_corpus_too_short_for_one_window_is_a_clear_error(gpt2_tokenizer, tmp_path):
    settings = SETTINGS | {"cache_dir": tmp_path, "val_ratio": 0.1}
    dm = TaskDataModule(Pretrain(), InMemory("a few words only"), gpt2_tokenizer, settings, 2, 0)
    with pytest.raises(ValueError, match="fewer than one window of data.max_length=16"):
        dm.setup("fit")


def test_kjv_corpus_is_clean_prose():
    text = kjv_text()
    assert text.startswith("The First Book of Moses, called Genesis\n\nIn the beginning God created")
    assert "Amen." in text[-100:]
    assert not re.search(r"\d+:\d+ ", text)
    assert 4_000_000 < len(text) < 4_500_000


def test_folder_corpus_joins_sorted_files_as_documents(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text")
    assert corpus_text(Folder(str(tmp_path))) == "first <|endoftext|> second"
    assert corpus_text(Folder(str(tmp_path / "b*.txt"))) == "second"


@pytest.mark.parametrize(
    "content, message",
    [(None, "does not exist"), (b"\x00\x01binary", "is binary"), (b"caf\xe9", "is not UTF-8"), (b"  \n", "is empty")],
)
def test_unreadable_corpus_files_are_named_in_the_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as e:
        read_text_file(path)
    assert str(path) in str(e.value)


TRICKY = (
    "Chapter 1\n\nIn the beginning.\nIt's 'quoted'\n's and 've\n  indented\n\t tab\n"
    "<|endoftext|>\nnext document 123\n456\n\n\nend \nspace before\n\u00e9t\u00e9 caf\u00e9 \u2014 dash\n!?\n"
)


@pytest.mark.parametrize("size", [1, 3, 10])
def test_chunks_cut_only_where_encoding_cannot_change(gpt2_tokenizer, size):
    text = TRICKY * 5
    chunks = list(safe_chunks(text, size))
    assert "".join(chunks) == text and len(chunks) > 20
    assert [i for c in chunks for i in gpt2_tokenizer.encode(c, allowed_special=True)] == gpt2_tokenizer.encode(text, allowed_special=True)
    simple = SimpleTokenizerV2.from_text(text)
    assert [i for c in chunks for i in simple.encode(c, allowed_special=True)] == simple.encode(text, allowed_special=True)


def test_streamed_token_cache_equals_encoding_the_whole_text(gpt2_tokenizer, shared_file, tmp_path, monkeypatch):
    text = shared_file("the-verdict.txt").read_text(encoding="utf-8")
    monkeypatch.setattr(gpt.data.tokens, "CHUNK_CHARS", 500)  # ~40 chunks, in and out of a queue of a few
    monkeypatch.setattr(gpt.data.encode, "IN_FLIGHT_PER_THREAD", 1)
    ids = token_ids(InMemory(text), gpt2_tokenizer, tmp_path)
    assert ids.tolist() == gpt2_tokenizer.encode(text, allowed_special=True)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left
    assert len(token_ids(InMemory(""), gpt2_tokenizer, tmp_path)) == 0
