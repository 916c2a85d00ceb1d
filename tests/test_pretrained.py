"""GPT-2 weights in the Hugging Face layout: loaded, they give transformers' numbers; exported, transformers loads them.

transformers is a test-only dependency: the reference these tests compare against.
"""

import json
import pickle

import pytest
import torch

from conftest import RunsCode
from gpt import pretrained
from gpt.errors import UserError
from gpt.generation import generate
from gpt.model import GPTConfig, GPTModel
from gpt.pretrained import config_from_hf, export_hf, load_pretrained, load_weights, read_safetensors

transformers = pytest.importorskip("transformers")

# Two shapes unlike each other: more heads than layers and the other way round, full GPT-2 vocabulary in one.
SHAPES = {
    "wide": dict(vocab_size=50257, n_positions=64, n_embd=48, n_layer=2, n_head=4),
    "deep": dict(vocab_size=311, n_positions=40, n_embd=24, n_layer=4, n_head=2),
}


def hf_model(shape: dict, seed: int, **extra) -> "transformers.GPT2LMHeadModel":
    torch.manual_seed(seed)
    # initializer_range 0.2: peaked distributions, so greedy choices are not decided by rounding.
    config = transformers.GPT2Config(**shape, initializer_range=0.2, **extra)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # GPT-2 starts with zero biases and unit norms: make them count too
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module", params=list(SHAPES))
def saved(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = hf_model(SHAPES[request.param], seed=len(request.param))
    reference.save_pretrained(directory)
    return directory, reference


def test_logits_match_transformers(saved):
    directory, reference = saved
    model, tokenizer = load_pretrained(directory)
    cfg = model.cfg
    assert (cfg.qkv_bias, cfg.tie_weights, tokenizer.n_vocab) == (True, True, 50257)
    assert model.out_head.weight is model.tok_emb.weight
    idx = torch.randint(0, cfg.vocab_size, (4, cfg.context_length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(idx), reference(idx).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_greedy_generation_matches_transformers(saved):
    directory, reference = saved
    model, _ = load_pretrained(directory)
    prompt = torch.randint(0, model.cfg.vocab_size, (3, 5), generator=torch.Generator().manual_seed(1))
    ours = generate(model, prompt, max_new_tokens=30, context_length=model.cfg.context_length)
    theirs = reference.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=30, min_new_tokens=30,
        eos_token_id=None, pad_token_id=0,
    )
    assert ours.shape == (3, 35)
    assert ours.tolist() == theirs.tolist()


def test_untied_head_loads_as_its_own_parameter(tmp_path):
    reference = hf_model(SHAPES["deep"], seed=3, tie_word_embeddings=False)
    reference.save_pretrained(tmp_path)
    model, _ = load_pretrained(tmp_path)
    assert model.cfg.tie_weights is False and model.out_head.weight is not model.tok_emb.weight
    idx = torch.arange(12)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference(idx).logits, atol=1e-5, rtol=0)


def test_export_round_trip_gives_the_same_logits(tmp_path):
    cfg = GPTConfig(vocab_size=300, context_length=32, emb_dim=32, n_heads=4, n_layers=3, drop_rate=0.0,
                    qkv_bias=True, tie_weights=True)
    torch.manual_seed(0)
    ours = GPTModel(cfg).eval()
    with torch.no_grad():  # non-zero biases, so a bias mapped to the wrong place shows
        for name, p in ours.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    export_hf(ours, {"name": "gpt2"}, 299, tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 300, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-5, rtol=0)
        back, _ = load_pretrained(tmp_path)
        torch.testing.assert_close(back(idx), ours(idx), atol=0, rtol=0)


@pytest.mark.parametrize(
    "change, reason",
    [({"tie_weights": False}, "model.tie_weights=false"), ({"qkv_bias": False}, "model.qkv_bias=false")],
)
def test_export_refuses_what_gpt2_cannot_hold(tmp_path, change, reason):
    cfg = GPTConfig(vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0,
                    **{"qkv_bias": True, "tie_weights": True, **change})
    with pytest.raises(UserError, match=reason):
        export_hf(GPTModel(cfg), {"name": "gpt2"}, None, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_a_config_gpt_model_cannot_compute_is_refused():
    base = dict(vocab_size=10, n_positions=8, n_embd=8, n_head=2, n_layer=1)
    assert config_from_hf(base).context_length == 8
    with pytest.raises(ValueError, match="activation_function='relu'"):
        config_from_hf({**base, "activation_function": "relu"})
    with pytest.raises(ValueError, match="'llama'"):
        config_from_hf({**base, "model_type": "llama"})


def test_weights_that_do_not_fit_the_model_are_a_clear_error():
    cfg = GPTConfig(vocab_size=10, context_length=8, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0,
                    qkv_bias=True, tie_weights=True)
    state = GPTModel(cfg).state_dict()
    with torch.no_grad():
        with pytest.raises(ValueError, match="lack 1 tensor.*final_norm.shift"):
            load_weights(GPTModel(cfg), [(k, v) for k, v in state.items() if k != "final_norm.shift"])
        with pytest.raises(ValueError, match=r"pos_emb.weight is \(9, 8\) in the weights, \(8, 8\) in the model"):
            load_weights(GPTModel(cfg), [("pos_emb.weight", torch.zeros(9, 8))])
        with pytest.raises(ValueError, match="'lm_bias'"):
            load_weights(GPTModel(cfg), [("lm_bias", torch.zeros(1))])


def test_a_pickle_bin_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_head": 2,
                                                      "n_layer": 1}))
    torch.save({"wte.weight": torch.zeros(10, 8), "evil": RunsCode(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_pretrained(tmp_path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the same object through plain pickle does run code
    assert marker.exists()


def exportable(vocab_size: int = 50) -> GPTModel:
    return GPTModel(GPTConfig(vocab_size=vocab_size, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                              drop_rate=0.0, qkv_bias=True, tie_weights=True))


def test_export_refuses_a_folder_with_anything_in_it_unless_overwrite(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("theirs")
    with pytest.raises(UserError, match=f"{out} is not empty; choose a new folder, or add overwrite=true"):
        export_hf(exportable(), {"name": "gpt2"}, None, out)
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == "theirs"
    export_hf(exportable(vocab_size=60), {"name": "gpt2"}, None, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left beside it


def test_export_to_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=f"{tmp_path / 'notes.txt'} is a file; give a folder"):
        export_hf(exportable(), {"name": "gpt2"}, None, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_export_that_fails_midway_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    out = tmp_path / "hf"
    export_hf(exportable(vocab_size=50), {"name": "gpt2"}, None, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pretrained, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_hf(exportable(vocab_size=60), {"name": "gpt2"}, None, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def safetensors_file(path, header: bytes | dict, header_size: int | None = None, data: bytes = b"") -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(raw) if header_size is None else header_size).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize("case, message", [
    ("header size beyond the file", "header size 1099511627776 does not fit the file's"),
    ("header not JSON", "its header is not JSON"),
    ("shape larger than its bytes", r"tensor w \(\[1000000, 1000000\] F32\) does not fit bytes 0..16"),
    ("offsets beyond the file", r"tensor w \(\[4\] F32\) does not fit bytes 0..1600 of its 16 bytes"),
    ("negative size", "the header entry of tensor w is malformed"),
])
def test_safetensors_sizes_are_checked_before_anything_is_allocated(tmp_path, monkeypatch, case, message):
    path = tmp_path / "model.safetensors"
    data = bytes(16)
    entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    if case == "header size beyond the file":
        safetensors_file(path, {"w": entry}, header_size=2**40, data=data)
    elif case == "header not JSON":
        safetensors_file(path, b"\xff{not json", data=data)
    elif case == "shape larger than its bytes":
        safetensors_file(path, {"w": {**entry, "shape": [10**6, 10**6]}}, data=data)
    elif case == "offsets beyond the file":
        safetensors_file(path, {"w": {**entry, "data_offsets": [0, 1600]}}, data=data)
    else:
        safetensors_file(path, {"w": {**entry, "shape": [-4]}}, data=data)
    monkeypatch.setattr(torch, "empty", lambda *a, **k: pytest.fail("allocated before the sizes were checked"))
    with pytest.raises(UserError, match=message):
        list(read_safetensors(path))
