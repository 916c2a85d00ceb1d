"""Chapter 5, pretraining on unlabeled data: generating with the book's helpers, the loss and perplexity of a
batch, training and validation windows, and the decoding strategies (temperature, top-k). The model is untrained:
``python train.py`` is the training loop of 5.2, and ``gpt/pretrained.py`` loads OpenAI's weights (5.5).

python -m book.ch05
"""

from __future__ import annotations

import torch

from book import section, the_verdict
from gpt.evaluation import mean_next_token_loss
from gpt.generation import generate, generate_text_simple, sample_next, text_to_token_ids, token_ids_to_text
from gpt.loss import next_token_loss
from gpt.model import GPTConfig, GPTModel
from gpt.tokenizer import GPT2Tokenizer

GPT_CONFIG_124M = {
    "vocab_size": 50257,
    "context_length": 256,  # shortened from 1024 to train on a laptop
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
VOCAB = {"closer": 0, "every": 1, "effort": 2, "forward": 3, "inches": 4, "moves": 5, "pizza": 6, "toward": 7, "you": 8}
INVERSE_VOCAB = {v: k for k, v in VOCAB.items()}


def print_sampled_tokens(logits: torch.Tensor, temperature: float = 1.0) -> None:
    """How often each word of the toy vocabulary is drawn in 1,000 samples (the project's sampler)."""
    torch.manual_seed(123)
    sample = [sample_next(logits[None], temperature=temperature).item() for _ in range(1_000)]
    for i, freq in enumerate(torch.bincount(torch.tensor(sample))):
        print(f"{freq} x {INVERSE_VOCAB[i]}")


def main() -> None:
    tokenizer = GPT2Tokenizer()
    cfg = GPTConfig(**GPT_CONFIG_124M, tie_weights=False)

    section("5.1.1 Using GPT to generate text")
    torch.manual_seed(123)
    model = GPTModel(cfg).eval()
    token_ids = generate_text_simple(
        model, idx=text_to_token_ids("Every effort moves you", tokenizer), max_new_tokens=10, context_size=256
    )
    print("Output text:\n", token_ids_to_text(token_ids, tokenizer))

    section("5.1.2 Calculating the text generation loss")
    inputs = torch.tensor([[16833, 3626, 6100],  # ["every effort moves",
                           [40, 1107, 588]])  # "I really like"]
    targets = torch.tensor([[3626, 6100, 345],  # [" effort moves you",
                            [1107, 588, 11311]])  # " really like chocolate"]
    with torch.no_grad():
        logits = model(inputs)
    probas = torch.softmax(logits, dim=-1)
    print(probas.shape)
    token_ids = torch.argmax(probas, dim=-1, keepdim=True)
    print("Token IDs:\n", token_ids)
    print(f"Targets batch 1: {token_ids_to_text(targets[0], tokenizer)}")
    print(f"Outputs batch 1: {token_ids_to_text(token_ids[0].flatten(), tokenizer)}")
    target_probas_1 = probas[0, [0, 1, 2], targets[0]]
    print("Text 1:", target_probas_1)
    target_probas_2 = probas[1, [0, 1, 2], targets[1]]
    print("Text 2:", target_probas_2)
    log_probas = torch.log(torch.cat((target_probas_1, target_probas_2)))
    print(log_probas)
    avg_log_probas = torch.mean(log_probas)
    print(avg_log_probas)
    print(avg_log_probas * -1)
    print("Logits shape:", logits.shape)
    print("Targets shape:", targets.shape)
    print("Flattened logits:", logits.flatten(0, 1).shape)
    print("Flattened targets:", targets.flatten().shape)
    loss = next_token_loss(logits, targets)  # the project's loss: cross-entropy over the flattened batch
    print(loss)
    print("Perplexity:", torch.exp(loss))

    section("5.1.3 Calculating the training and validation set losses")
    text_data = the_verdict()
    print("Characters:", len(text_data))
    print("Tokens:", len(tokenizer.encode(text_data)))
    split_idx = int(0.90 * len(text_data))  # the first 90% of the text trains, the rest validates
    train_ids = torch.tensor(tokenizer.encode(text_data[:split_idx]))
    val_ids = torch.tensor(tokenizer.encode(text_data[split_idx:]))
    print("Train tokens:", len(train_ids), "Validation tokens:", len(val_ids))
    # The book's loss over each part: 10 forward passes of 512 tokens, too slow for this script on a CPU, so the
    # first validation window only. gpt.evaluation.mean_next_token_loss scores a whole text (python evaluate.py).
    val_loss, scored = mean_next_token_loss(model, val_ids[: cfg.context_length + 1], cfg.context_length, 1)
    print(f"Validation loss of the first window: {val_loss:.4f} over {scored} tokens")

    section("5.3 Decoding strategies to control randomness")
    next_token_logits = torch.tensor([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79])
    probas = torch.softmax(next_token_logits, dim=0)
    print(INVERSE_VOCAB[torch.argmax(probas).item()])
    torch.manual_seed(123)
    print(INVERSE_VOCAB[torch.multinomial(probas, num_samples=1).item()])
    print_sampled_tokens(next_token_logits)
    for temperature in (1, 0.1, 5):  # 5.3.1 temperature scaling
        print(f"temperature {temperature}:", torch.softmax(next_token_logits / temperature, dim=0))
    top_k = 3  # 5.3.2 top-k sampling
    top_logits, top_pos = torch.topk(next_token_logits, top_k)
    print("Top logits:", top_logits)
    print("Top positions:", top_pos)
    new_logits = torch.where(next_token_logits < top_logits[-1], torch.tensor(float("-inf")), next_token_logits)
    print(new_logits)
    print(torch.softmax(new_logits, dim=0))

    section("5.3.3 Modifying the text generation function")
    torch.manual_seed(123)
    token_ids = generate(model, text_to_token_ids("Every effort moves you", tokenizer), max_new_tokens=15,
                         context_length=cfg.context_length, top_k=25, temperature=1.4)
    print("Output text:\n", token_ids_to_text(token_ids, tokenizer))


if __name__ == "__main__":
    main()
