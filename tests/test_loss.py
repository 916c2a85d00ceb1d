import pytest
import torch

from gpt.loss import chunked_next_token_loss, next_token_loss
from gpt.model import GPTConfig, GPTModel


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])  # uneven chunks, several chunks, one chunk
def test_chunked_loss_and_gradients_equal_the_plain_loss(chunk_size):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=211, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                    qkv_bias=False, tie_weights=True)  # tied: the head's gradient joins the embedding's
    model = GPTModel(cfg)
    idx, targets = torch.randint(0, 211, (3, 16)), torch.randint(0, 211, (3, 16))

    plain = next_token_loss(model(idx), targets)
    plain.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    chunked = chunked_next_token_loss(model.hidden_states(idx), model.out_head.weight, targets, chunk_size)
    (2 * chunked).backward()  # an outer factor must reach the gradients as well

    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * expected[name], atol=1e-7, rtol=1e-5), name


def test_chunked_loss_without_gradients_is_the_same_number():
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(2, 9, 8), torch.randn(50, 8), torch.randint(0, 50, (2, 9))
    plain = next_token_loss(hidden @ weight.T, targets)
    with torch.no_grad():
        assert chunked_next_token_loss(hidden, weight, targets, 4).item() == pytest.approx(plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="chunk size must be positive"):
        chunked_next_token_loss(hidden, weight, targets, 0)
