"""Chapter 2, working with text data: tokenizing, token ids, byte-pair encoding, sliding windows, embeddings.

python -m book.ch02
"""

from __future__ import annotations

import re

import torch
from torch.utils.data import DataLoader

from book import section, the_verdict
from gpt.data.windows import GPTDataset
from gpt.tokenizer import GPT2Tokenizer, SimpleTokenizerV1, SimpleTokenizerV2, build_vocab, split_words


def main() -> None:
    section("2.2 Tokenizing text")
    raw_text = the_verdict()
    print("Total number of character:", len(raw_text))
    print(raw_text[:99])
    text = "Hello, world. This, is a test."
    print(re.split(r"(\s)", text))
    print([item for item in re.split(r"([,.]|\s)", text) if item.strip()])
    text = "Hello, world. Is this-- a test?"
    print(split_words(text))  # the book's final regex: ([,.:;?_!"()\']|--|\s)
    preprocessed = split_words(raw_text)
    print(len(preprocessed))
    print(preprocessed[:30])

    section("2.3 Converting tokens into token IDs")
    vocab = build_vocab(raw_text)
    print("vocab_size:", len(vocab))
    tokenizer = SimpleTokenizerV1(vocab)
    text = """"It's the last he painted, you know," Mrs. Gisburn said with pardonable pride."""
    ids = tokenizer.encode(text)
    print(ids)
    print(tokenizer.decode(ids))

    section("2.4 Adding special context tokens")
    try:
        tokenizer.encode("Hello, do you like tea?")
    except KeyError as e:
        print("SimpleTokenizerV1 refuses unknown words: KeyError", e)
    tokenizer = SimpleTokenizerV2(vocab)
    print("vocab_size with <|endoftext|> and <|unk|>:", tokenizer.n_vocab)
    print(tokenizer.vocab[-5:])
    text = " <|endoftext|> ".join(("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    print(text)
    print(tokenizer.encode(text, allowed_special=True))  # the typed <|endoftext|> is the special token here
    print(tokenizer.decode(tokenizer.encode(text, allowed_special=True)))

    section("2.5 Byte pair encoding")
    tokenizer = GPT2Tokenizer()
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
    integers = tokenizer.encode(text, allowed_special=True)  # the book's allowed_special={"<|endoftext|>"}
    print(integers)
    print(tokenizer.decode(integers))

    section("2.6 Data sampling with a sliding window")
    enc_text = tokenizer.encode(raw_text)
    print(len(enc_text))
    enc_sample = enc_text[50:]
    context_size = 4
    print(f"x: {enc_sample[:context_size]}")
    print(f"y:      {enc_sample[1 : context_size + 1]}")
    for i in range(1, context_size + 1):
        context, desired = enc_sample[:i], enc_sample[i]
        print(context, "---->", desired)
    for i in range(1, context_size + 1):
        context, desired = enc_sample[:i], enc_sample[i]
        print(tokenizer.decode(context), "---->", tokenizer.decode([desired]))
    token_ids = torch.tensor(enc_text)
    dataloader = DataLoader(GPTDataset(token_ids.numpy(), max_length=4, stride=1), batch_size=1, shuffle=False)
    data_iter = iter(dataloader)
    print(next(data_iter))
    print(next(data_iter))
    dataloader = DataLoader(GPTDataset(token_ids.numpy(), max_length=4, stride=4), batch_size=8, shuffle=False)
    inputs, targets = next(iter(dataloader))
    print("Inputs:\n", inputs)
    print("\nTargets:\n", targets)

    section("2.7 Creating token embeddings")
    input_ids = torch.tensor([2, 3, 5, 1])
    torch.manual_seed(123)
    embedding_layer = torch.nn.Embedding(6, 3)
    print(embedding_layer.weight)
    print(embedding_layer(torch.tensor([3])))
    print(embedding_layer(input_ids))

    section("2.8 Encoding word positions")
    vocab_size, output_dim, max_length = 50257, 256, 4
    token_embedding_layer = torch.nn.Embedding(vocab_size, output_dim)
    dataloader = DataLoader(GPTDataset(token_ids.numpy(), max_length, stride=max_length), batch_size=8)
    inputs, targets = next(iter(dataloader))
    print("Token IDs:\n", inputs)
    print("\nInputs shape:\n", inputs.shape)
    token_embeddings = token_embedding_layer(inputs)
    print(token_embeddings.shape)
    pos_embedding_layer = torch.nn.Embedding(max_length, output_dim)
    pos_embeddings = pos_embedding_layer(torch.arange(max_length))
    print(pos_embeddings.shape)
    input_embeddings = token_embeddings + pos_embeddings
    print(input_embeddings.shape)


if __name__ == "__main__":
    main()
