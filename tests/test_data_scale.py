"""The sharded token cache: streamed parts, shards per file, locks, resume after a kill, damage, real formats."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt.data.encode
import gpt.data.files
import gpt.data.tokens
from gpt.data.sampler import ResumableSampler
from gpt.data.shards import ShardedIds
from gpt.data.sources import CorpusError, corpus_text
from gpt.data.sources.folder import Folder
from gpt.data.sources.hf import HFDataset
from gpt.data.sources.jsonl import JsonlFiles
from gpt.data.tokens import token_ids
from gpt.data.windows import GPTDataset, split_ids
from gpt.tokenizer import SimpleTokenizerV2

ROOT = Path(__file__).resolve().parents[1]
# Files whose ends are where joining can go wrong: trailing newlines and spaces, leading whitespace, no newline at
# all, multi-byte characters that a small read block cuts in two.
FILES = {
    "a.txt": "Chapter 1\n\nIn the beginning.\nIt's 'quoted'\n",
    "b.txt": "  indented start\n\t tab\nend with spaces   ",
    "c.txt": "\n\nleading newlines, caf\u00e9 \u2014 d\u00e9j\u00e0 vu\n\n\n",
    "d.txt": "one line, no newline at the end",
}


def write_folder(path: Path, files: dict[str, str], repeat: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text * repeat, encoding="utf-8")
    return path


def small_pieces(monkeypatch) -> None:
    """Read 7 bytes at a time (splitting multi-byte characters) and cut chunks of ~20 characters."""
    monkeypatch.setattr(gpt.data.files, "BLOCK_BYTES", 7)
    monkeypatch.setattr(gpt.data.tokens, "CHUNK_CHARS", 20)
    monkeypatch.setattr(gpt.data.encode, "IN_FLIGHT_PER_THREAD", 1)


def shard_bytes(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "shards").glob("*.npy"))}


@pytest.mark.parametrize("tokenizer", ["gpt2", "simple_v2"])
def test_sharded_cache_equals_encoding_the_whole_text(gpt2_tokenizer, tmp_path, monkeypatch, tokenizer):
    small_pieces(monkeypatch)
    source = Folder(str(write_folder(tmp_path / "corpus", FILES, repeat=3)))
    text = corpus_text(source)
    tok = gpt2_tokenizer if tokenizer == "gpt2" else SimpleTokenizerV2.from_text(text)
    ids = token_ids(source, tok, tmp_path / "cache")
    assert len(ids.paths) == len(FILES)  # one shard per file
    assert ids.tolist() == tok.encode(text, allowed_special=True)
    monkeypatch.setattr(gpt.data.tokens, "SHARD_TOKENS", 10)  # and a large file in several shards
    ids = token_ids(source, tok, tmp_path / "cache")
    assert len(ids.paths) > len(FILES) + 2 and ids.tolist() == tok.encode(text, allowed_special=True)


def test_windows_and_sampler_span_shard_boundaries(tmp_path):
    lengths = [7, 0, 5, 11, 3]  # an empty shard too
    flat = np.arange(sum(lengths), dtype=np.uint16)
    paths, start = [], 0
    for i, n in enumerate(lengths):
        paths.append(tmp_path / f"{i}.npy")
        np.save(paths[-1], flat[start : start + n])
        start += n
    ids = ShardedIds(paths, lengths)
    for a in range(len(flat) + 1):
        for b in range(a, len(flat) + 1):
            assert np.asarray(ids[a:b]).tolist() == flat[a:b].tolist()
    train, val = split_ids(ids, 0.25)
    assert np.asarray(val).tolist() == flat[len(np.asarray(train)) :].tolist()
    sharded, plain = GPTDataset(train, 4, 3), GPTDataset(split_ids(flat, 0.25)[0], 4, 3)
    assert len(sharded) == len(plain) > 3
    sampler = ResumableSampler(len(sharded), seed=3)
    for i in sampler:
        assert all(torch.equal(s, p) for s, p in zip(sharded[i], plain[i]))
    copy = pickle.loads(pickle.dumps(sharded))  # ddp_spawn: paths travel, maps reopen
    assert len(pickle.dumps(sharded)) < 2000 and torch.equal(copy[2][0], plain[2][0])


def test_changed_file_invalidates_only_its_shard(gpt2_tokenizer, tmp_path, monkeypatch):
    corpus = write_folder(tmp_path / "corpus", FILES)
    cache = tmp_path / "cache"
    token_ids(Folder(str(corpus)), gpt2_tokenizer, cache)
    before = {p.name: p.stat().st_mtime_ns for p in (cache / "shards").glob("*.npy")}
    built = []
    real_build = gpt.data.tokens._build
    monkeypatch.setattr(gpt.data.tokens, "_build", lambda parts, i, *a: built.append(i) or real_build(parts, i, *a))
    (corpus / "b.txt").write_text("a new second file\n", encoding="utf-8")
    ids = token_ids(Folder(str(corpus)), gpt2_tokenizer, cache)
    assert built == [1]
    assert ids.tolist() == gpt2_tokenizer.encode(corpus_text(Folder(str(corpus))), allowed_special=True)
    kept = [p for p in ids.paths if p.name in before]  # the old shard of b.txt stays, unused
    assert len(kept) == len(FILES) - 1 and all(p.stat().st_mtime_ns == before[p.name] for p in kept)


def test_damaged_shards_are_detected_and_rebuilt(gpt2_tokenizer, tmp_path, capfd):
    corpus = write_folder(tmp_path / "corpus", FILES, repeat=200)
    cache = tmp_path / "cache"
    want = token_ids(Folder(str(corpus)), gpt2_tokenizer, cache).tolist()
    first, second = sorted((cache / "shards").glob("*.npy"))[:2]
    size = first.stat().st_size
    with open(first, "r+b") as f:
        f.truncate(size - 10)
    with open(second, "r+b") as f:  # zeros after the header: a valid .npy of token 0
        f.seek(128)
        f.write(bytes(second.stat().st_size - 128))
    stale = cache / "shards" / ".x.npy.otherhost.1.abcd.tmp"
    stale.write_bytes(b"half")
    capfd.readouterr()
    assert token_ids(Folder(str(corpus)), gpt2_tokenizer, cache, progress=False).tolist() == want
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "bytes, expected" in warnings[0] + warnings[1]
    assert "checksum mismatch" in warnings[0] + warnings[1]
    assert first.stat().st_size == size and not stale.exists()


def test_progress_bar_reports_tokens(gpt2_tokenizer, tmp_path, capfd):
    corpus = write_folder(tmp_path / "corpus", FILES, repeat=50)
    ids = token_ids(Folder(str(corpus)), gpt2_tokenizer, tmp_path / "cache")
    err = capfd.readouterr().err
    assert "token cache: 4 shards" in err and f"{len(ids):,} tokens" in err
    token_ids(Folder(str(corpus)), gpt2_tokenizer, tmp_path / "cache")
    assert capfd.readouterr().err == ""  # a warm cache builds nothing and says nothing


BUILDER = """
import sys, time
import gpt.data.tokens as t
from gpt.data.sources.folder import Folder
from gpt.tokenizer import GPT2Tokenizer

tok = GPT2Tokenizer()
encode, built = tok.encode_array, []  # the cache's encoder, slow enough to be caught midway
tok.encode_array = lambda text, **kw: time.sleep(float(sys.argv[3])) or encode(text, **kw)
real = t._build
t._build = lambda parts, i, *a: built.append(i) or real(parts, i, *a)
t.CHUNK_CHARS, t.SHARD_TOKENS = 2000, int(sys.argv[4])
ids = t.token_ids(Folder(sys.argv[1]), tok, sys.argv[2], progress=False)
print(len(built), len(ids))
"""


def builder(corpus: Path, cache: Path, delay: float, shard_tokens: int = 10**8) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(corpus), str(cache), str(delay), str(shard_tokens)],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def many_files(path: Path, n: int = 6) -> Path:
    return write_folder(path, {f"{i:02d}.txt": FILES["a.txt"] + f"file {i}\n" for i in range(n)}, repeat=300)


def test_killed_prep_keeps_finished_shards_and_resumes_to_identical_ones(gpt2_tokenizer, tmp_path, monkeypatch):
    corpus = many_files(tmp_path / "corpus")
    monkeypatch.setattr(gpt.data.tokens, "CHUNK_CHARS", 2000)
    monkeypatch.setattr(gpt.data.tokens, "SHARD_TOKENS", 3000)  # files of ~4,000 tokens: 2 shards each
    reference = token_ids(Folder(str(corpus)), gpt2_tokenizer, tmp_path / "reference", progress=False)
    assert len(reference.paths) == 12
    cache = tmp_path / "cache"
    proc = builder(corpus, cache, delay=0.02, shard_tokens=3000)
    deadline = time.time() + 60
    while len(list((cache / "shards").glob("*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, "the builder finished before it could be killed"
    finished = {p.name: p.stat().st_mtime_ns for p in (cache / "shards").glob("*.npy")}
    assert 3 <= len(finished) < 12
    resumed = builder(corpus, cache, delay=0, shard_tokens=3000)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert int(out.split()[0]) <= 6 - len(finished) // 2  # parts whose shards were all written are not rebuilt
    assert all((cache / "shards" / k).stat().st_mtime_ns == v for k, v in finished.items())  # nor shards of others
    assert shard_bytes(cache) == shard_bytes(tmp_path / "reference")
    assert not list(cache.rglob("*.tmp"))


def test_two_processes_building_at_once_end_with_one_valid_cache(gpt2_tokenizer, tmp_path):
    corpus = many_files(tmp_path / "corpus", n=4)
    cache = tmp_path / "cache"
    procs = [builder(corpus, cache, delay=0.002) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    built, lengths = zip(*[map(int, out.split()) for out, _ in results])
    assert sorted(built) == [0, 4]  # one process encoded everything, the other found it done
    assert lengths[0] == lengths[1] == len(gpt2_tokenizer.encode(corpus_text(Folder(str(corpus))), allowed_special=True))
    assert len(list((cache / "shards").glob("*.npy"))) == 4


RECORDS = [{"text": "first record\n", "id": 1}, {"text": "  second, indented", "id": 2},
           {"text": "third caf\u00e9", "id": 3}]


def write_jsonl(folder: Path) -> Path:
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS[:2]) + "\n\n", encoding="utf-8")
    (folder / "part-1.jsonl").write_text(json.dumps(RECORDS[2]) + "\n", encoding="utf-8")
    return folder


def test_jsonl_source_and_its_errors(gpt2_tokenizer, tmp_path):
    folder = write_jsonl(tmp_path / "data")
    want = gpt2_tokenizer.encode(" <|endoftext|> ".join(r["text"] for r in RECORDS), allowed_special=True)
    assert token_ids(JsonlFiles(str(folder)), gpt2_tokenizer, tmp_path / "cache").tolist() == want
    (folder / "part-1.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"part-1.jsonl:1: no text field 'text' \(found \['body'\]\)"):
        token_ids(JsonlFiles(str(folder)), gpt2_tokenizer, tmp_path / "cache")
    (folder / "part-1.jsonl").write_text("not json\n")
    with pytest.raises(CorpusError, match=r"part-1.jsonl:1 is not valid JSON"):
        token_ids(JsonlFiles(str(folder)), gpt2_tokenizer, tmp_path / "cache")


def test_hf_source_on_a_local_jsonl_folder(gpt2_tokenizer, tmp_path):
    pytest.importorskip("datasets")
    folder = write_jsonl(tmp_path / "data")
    ids = token_ids(HFDataset(str(folder)), gpt2_tokenizer, tmp_path / "cache")
    assert ids.tolist() == gpt2_tokenizer.encode(" <|endoftext|> ".join(r["text"] for r in RECORDS), allowed_special=True)
    assert len(ids.paths) == 2
    with pytest.raises(CorpusError, match="no text field 'body'"):
        token_ids(HFDataset(str(folder), text_field="body"), gpt2_tokenizer, tmp_path / "cache")


@pytest.mark.parametrize("name, cls", [("jsonl", JsonlFiles), ("hf", HFDataset), ("folder", Folder)])
def test_data_configs_choose_their_source(tmp_path, name, cls):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"data={name}", f"data.path={tmp_path}"])
    source = instantiate(cfg.data.source)
    assert isinstance(source, cls) and source.path == str(tmp_path)
    assert cfg.data.cache_dir and cfg.data.val_ratio  # the pretraining settings come with it
