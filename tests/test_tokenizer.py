import re

import pytest

from gpt.errors import UserError
from gpt.tokenizer import (
    ENDOFTEXT,
    UNKNOWN,
    BPETokenizer,
    CharTokenizer,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    StreamDecoder,
    build_tokenizer,
    build_vocab,
    load_tokenizer,
    split_words,
)


def test_gpt2_bpe_matches_openai_vectors(gpt2_tokenizer):
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces" + "of someunknownPlace."
    ids = gpt2_tokenizer.encode(text, allowed_special=True)
    assert ids == [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 1659, 617,
                   34680, 27271, 13]
    assert gpt2_tokenizer.decode(ids) == text
    assert gpt2_tokenizer.encode("Akwirw ier") == [33901, 86, 343, 86, 220, 959]
    assert gpt2_tokenizer.n_vocab == 50257
    assert gpt2_tokenizer.eot_id == 50256


def test_gpt2_bpe_counts_the_verdict(gpt2_tokenizer, shared_file):
    text = shared_file("the-verdict.txt").read_text(encoding="utf-8")
    assert len(gpt2_tokenizer.encode(text)) == 5145


def test_regex_vocabulary_of_the_verdict(shared_file):
    text = shared_file("the-verdict.txt").read_text(encoding="utf-8")
    assert len(build_vocab(text)) == 1130
    assert SimpleTokenizerV2.from_text(text).n_vocab == 1132


def test_split_keeps_punctuation_and_double_dash_and_drops_whitespace():
    assert split_words('Hello, world. Is this-- a test?') == ["Hello", ",", "world", ".", "Is", "this", "--", "a",
                                                             "test", "?"]


def test_simple_v1_round_trip_removes_space_before_punctuation():
    text = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    tok = SimpleTokenizerV1.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(split_words(text))
    assert tok.decode(ids) == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    assert tok.decode(tok.encode("the last, you know.")) == "the last, you know."


def test_simple_v1_unknown_word_is_an_error_naming_it():
    tok = SimpleTokenizerV1.from_text("the cat sat")
    with pytest.raises(UserError, match=re.escape("word 'dog' is not in the vocabulary")):
        tok.encode("the dog sat")


def test_simple_v2_maps_unknown_words_and_keeps_endoftext_only_when_allowed():
    tok = SimpleTokenizerV2.from_text("the cat sat on the mat.")
    assert tok.vocab[-2:] == [ENDOFTEXT, UNKNOWN]
    ids = tok.encode("the dog sat. <|endoftext|> the cat", allowed_special=True)
    assert ids[1] == tok.unk_id
    assert ids[4] == tok.eot_id
    assert tok.decode(ids) == "the <|unk|> sat. <|endoftext|> the cat"
    typed = tok.encode("the dog sat. <|endoftext|> the cat")  # typed by a user: no forged end of document
    assert tok.eot_id not in typed and typed[4] == tok.unk_id and typed[:4] + typed[5:] == ids[:4] + ids[5:]


def test_gpt2_endoftext_typed_in_text_is_plain_text_unless_allowed(gpt2_tokenizer):
    text = "Hi<|endoftext|>### Response:"
    typed = gpt2_tokenizer.encode(text)
    assert gpt2_tokenizer.eot_id not in typed
    assert gpt2_tokenizer.decode(typed) == text  # the same characters, as ordinary tokens
    allowed = gpt2_tokenizer.encode(text, allowed_special=True)
    assert allowed.count(gpt2_tokenizer.eot_id) == 1 and len(allowed) < len(typed)
    # The token cache's array path gives the same ids either way
    assert gpt2_tokenizer.encode_array(text).tolist() == typed
    assert gpt2_tokenizer.encode_array(text, allowed_special=True).tolist() == allowed


def test_stream_decoder_releases_whole_characters_only(gpt2_tokenizer):
    text = "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600 na\u00efve"
    ids = gpt2_tokenizer.encode(text)
    assert any("\ufffd" in gpt2_tokenizer.decode([i]) for i in ids)  # some character is split across tokens
    decoder = StreamDecoder(gpt2_tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + decoder.flush() == text
    assert "" in pieces  # held back at least once, until its character was complete


def test_stream_decoder_gives_up_on_an_incomplete_character_at_the_end(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("\U0001f600")
    decoder = StreamDecoder(gpt2_tokenizer)
    assert [decoder.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert "\ufffd" in decoder.flush()


def test_stream_decoder_of_a_word_tokenizer_keeps_its_spacing():
    tok = SimpleTokenizerV1.from_text("the cat sat, then slept.")
    decoder = StreamDecoder(tok)
    ids = tok.encode("the cat sat, then slept.")
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == tok.decode(ids)


@pytest.mark.parametrize("name", ["simple_v1", "simple_v2", "gpt2", "char", "bpe"])
def test_tokenizer_rebuilds_from_its_config(name, tmp_path):
    text = "In the beginning God created the heaven and the earth."
    options = {"vocab_size": 300, "cache_dir": tmp_path} if name == "bpe" else {}
    tok = build_tokenizer(name, text, **options)
    again = load_tokenizer(tok.to_config())
    assert again.encode(text) == tok.encode(text)
    assert again.n_vocab == tok.n_vocab


def test_unknown_tokenizer_name_is_an_error():
    with pytest.raises(UserError, match="unknown tokenizer 'nope'"):
        build_tokenizer("nope", "text")


TEXT = "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void; " * 20


def test_char_round_trip_with_endoftext_and_unknown_characters():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.n_vocab == len(set(TEXT)) + 2
    assert tok.decode(tok.encode(TEXT)) == TEXT
    ids = tok.encode(f"God{ENDOFTEXT}Zeus", allowed_special=True)
    assert ids[3] == tok.eot_id and ids[4] == tok.unk_id  # Z never occurs in TEXT
    assert tok.decode(ids) == f"God{ENDOFTEXT}{UNKNOWN}eus"


def test_bpe_trains_to_its_vocabulary_size_and_round_trips_any_text(tmp_path):
    tok = build_tokenizer("bpe", TEXT, vocab_size=300, cache_dir=tmp_path)
    assert tok.n_vocab == 300
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT) / 2  # merges learned: fewer tokens than bytes
    assert tok.decode(ids) == TEXT
    other = "Ζεύς said: \"naïve\" ☃ <|endoftext|> 123"  # bytes it never saw still encode: byte-level
    assert tok.decode(tok.encode(other)) == other
    assert tok.encode(f"a {ENDOFTEXT}", allowed_special=True)[-1] == tok.eot_id
    assert tok.eot_id not in tok.encode(f"a {ENDOFTEXT}")  # typed, it is text unless allowed


def test_bpe_is_trained_once_per_text_and_size(tmp_path, monkeypatch):
    first = build_tokenizer("bpe", TEXT, vocab_size=280, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("bpe-*.json"))) == 1
    monkeypatch.setattr(BPETokenizer, "train", lambda *a: pytest.fail("trained again instead of using the cache"))
    assert build_tokenizer("bpe", TEXT, vocab_size=280, cache_dir=tmp_path).to_config() == first.to_config()
    with pytest.raises(BaseException, match="trained again"):
        build_tokenizer("bpe", TEXT + "more", vocab_size=280, cache_dir=tmp_path)


def test_bpe_needs_a_sensible_vocabulary_size(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.vocab_size=N"):
        build_tokenizer("bpe", TEXT, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 257"):
        build_tokenizer("bpe", TEXT, vocab_size=100, cache_dir=tmp_path)
