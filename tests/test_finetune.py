"""The pure fine-tuning pieces: instruction collate and template, classification data and head, LoRA."""

import json

import pytest
import torch
import torch.nn as nn

from conftest import ScriptedModel
from gpt.data.sources.alpaca import format_input
from gpt.data.sources.labeled import read_labeled
from gpt.data.split import split
from gpt.loss import IGNORE_INDEX
from gpt.lora import LoRALinear, apply_lora, count_trainable, merge_lora
from gpt.tasks.classify import (
    ClassificationDataset, balance, classification_collate, last_token_logits, replace_head, set_trainable,
)
from gpt.tasks.instruct import InstructionDataset, instruction_collate
from gpt.model import GPTConfig, GPTModel

EOT = 50256


def tiny(tie_weights: bool = True, **kw) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0,
                              qkv_bias=True, tie_weights=tie_weights, **kw)).eval()


# --- instruction data ---------------------------------------------------------------------------------------------

def test_collate_appends_end_of_text_pads_and_ignores_later_pads():
    batch = [([0, 1, 2, 3, 4], 0), ([5, 6], 0), ([7, 8, 9], 0)]
    inputs, targets = instruction_collate(batch)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, EOT, EOT, EOT], [7, 8, 9, EOT, EOT]]
    assert targets.tolist() == [[1, 2, 3, 4, EOT], [6, EOT, -100, -100, -100], [8, 9, EOT, -100, -100]]


def test_collate_masks_the_prompt_and_truncates():
    batch = [([0, 1, 2, 3, 4], 3), ([5, 6], 1), ([7, 8, 9], 2)]  # prompt = the first 3, 1, 2 tokens
    _, targets = instruction_collate(batch, mask_prompt=True)
    # Target i is token i + 1: positions predicting a prompt token are ignored, the response and its EOT are not.
    assert targets.tolist() == [[-100, -100, 3, 4, EOT], [6, EOT, -100, -100, -100], [-100, 9, EOT, -100, -100]]
    inputs, targets = instruction_collate(batch, allowed_max_length=3)
    assert inputs.shape == targets.shape == (3, 3)
    assert targets[1].tolist() == [6, EOT, IGNORE_INDEX]


def test_alpaca_template_and_the_response_after_it(gpt2_tokenizer):
    with_input = format_input({"instruction": "Add.", "input": "1 + 1", "output": "2"})
    assert with_input.startswith("Below is an instruction that describes a task.")
    assert "### Instruction:\nAdd.\n\n### Input:\n1 + 1\n\n### Response:\n" in with_input
    assert "### Input" not in format_input({"instruction": "Hi.", "input": "", "output": "Hello."})
    ds = InstructionDataset([{"instruction": "Add.", "input": "1 + 1", "output": "2"}], gpt2_tokenizer)
    ids, prompt_len = ds[0]
    assert gpt2_tokenizer.decode(ids[:prompt_len]) == with_input and gpt2_tokenizer.decode(ids[prompt_len:]) == "2"


def test_instruction_split_is_85_10_5(shared_file):
    records = json.loads(shared_file("instruction-data.json").read_text(encoding="utf-8"))
    train, val, test = split(records, [0.85, 0.1, 0.05], seed=None)
    assert (len(train), len(val), len(test)) == (935, 110, 55)
    assert train[0] == records[0] and test[-1] == records[-1]  # no seed: the file's order, as in the book


# --- classification data ------------------------------------------------------------------------------------------

def test_sms_spam_balances_747_747_and_splits_70_10_20(shared_file):
    rows = read_labeled(shared_file("SMSSpamCollection.tsv"))
    assert len(rows) == 5574
    balanced = balance(rows, seed=123)
    assert sum(label == "spam" for _, label in balanced) == sum(label == "ham" for _, label in balanced) == 747
    parts = split(balanced, [0.7, 0.1, 0.2], seed=123)
    assert [len(p) for p in parts] == [1045, 149, 300]
    assert parts == split(balanced, [0.7, 0.1, 0.2], seed=123)  # the seed fixes the split
    assert parts != split(balanced, [0.7, 0.1, 0.2], seed=124)


def test_csv_with_text_and_label(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"good, really",pos\nbad,neg\n', encoding="utf-8")
    assert read_labeled(path) == [("good, really", "pos"), ("bad", "neg")]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="text and label"):
        read_labeled(tmp_path / "bad.csv")


def test_classification_batch_pads_and_keeps_lengths(gpt2_tokenizer):
    ds = ClassificationDataset([("Hello there", "ham"), ("WIN now", "spam")], gpt2_tokenizer, ["ham", "spam"], 8)
    batch = classification_collate([ds[0], ds[1], ([1], 0)], pad_id=EOT)
    assert batch["labels"].tolist() == [0, 1, 0]
    assert batch["lengths"].tolist() == [len(ds[0][0]), len(ds[1][0]), 1]
    assert batch["input_ids"][2, 1:].eq(EOT).all()


def test_prediction_reads_the_last_real_token_so_more_padding_changes_nothing():
    model = replace_head(tiny(), num_classes=2)
    ids = torch.tensor([[5, 9, 3, 7]])
    padded = torch.tensor([[5, 9, 3, 7] + [EOT % 64] * 6])
    lengths = torch.tensor([4])
    short, long = last_token_logits(model(ids), lengths), last_token_logits(model(padded), lengths)
    assert short.shape == (1, 2)
    torch.testing.assert_close(short, long)
    assert not torch.allclose(model(padded)[:, -1], short)  # the last position (a pad) would have given another answer


def test_new_head_unties_from_the_embedding_and_trainable_choices():
    model = tiny(tie_weights=True)
    emb = model.tok_emb.weight.detach().clone()
    replace_head(model, num_classes=3)
    assert model.out_head.weight.shape == (3, 16) and model.out_head.weight is not model.tok_emb.weight
    torch.testing.assert_close(model.tok_emb.weight, emb)
    set_trainable(model, "last_block")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prefixes = ("trf_blocks.1.", "final_norm.", "out_head.")
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    assert any(n.startswith("trf_blocks.1.") for n in trainable)
    set_trainable(model, "head")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"out_head.weight", "out_head.bias"}
    with pytest.raises(ValueError, match="task.trainable"):
        set_trainable(model, "everything")


# --- LoRA ---------------------------------------------------------------------------------------------------------

def test_lora_starts_as_the_base_model_and_trains_only_adapters():
    base = tiny()
    lora = apply_lora(tiny(), rank=4, alpha=8)
    ids = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(lora(ids), base(ids))  # B = 0: the update starts at nothing
    first = lora.trf_blocks[0].att.W_query
    assert isinstance(first, LoRALinear) and first.A.abs().sum() > 0 and first.B.abs().sum() == 0
    assert first.scaling == 2.0

    lora.train()
    lora(ids).sum().backward()
    named = dict(lora.named_parameters())
    with_grad = {n for n, p in named.items() if p.grad is not None}
    assert with_grad and all(n.endswith((".A", ".B")) for n in with_grad)
    assert {n for n, p in named.items() if p.requires_grad} == {n for n in named if n.endswith((".A", ".B"))}
    trainable, total = count_trainable(lora)
    assert 0 < trainable < total


def test_merged_weights_give_the_adapters_outputs_and_leave_a_tied_embedding_alone():
    model = apply_lora(tiny(tie_weights=True), rank=2, alpha=4)
    emb = model.tok_emb.weight.detach().clone()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.B.normal_()  # as if trained
    ids = torch.randint(0, 64, (2, 10))
    before = model(ids)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(type(m) is nn.Linear for m in (model.out_head, model.trf_blocks[1].ff.layers[2]))
    torch.testing.assert_close(model(ids), before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.tok_emb.weight, emb)


# --- chat ---------------------------------------------------------------------------------------------------------


def test_chat_streams_each_token_keeps_history_resets_and_exits(gpt2_tokenizer):
    from gpt.chat import chat

    hello, there = gpt2_tokenizer.encode(" Hello"), gpt2_tokenizer.encode(" there")
    model = ScriptedModel(hello + there + [EOT] + hello + [EOT] + hello + [EOT])
    writes: list[str] = []
    chat(model, gpt2_tokenizer, ["Greet me.\n", "Again.\n", "/reset\n", "Once more.\n", "/exit\n", "never read\n"],
         writes.append, max_new_tokens=10)
    assert writes[writes.index("assistant> ") + 1 : writes.index("assistant> ") + 4] == [" Hello", " there", "\n"]
    assert writes.count("assistant> ") == 3 and writes[-1] == "bye\n"
    first_prompt = gpt2_tokenizer.encode(format_input({"instruction": "Greet me."}))
    second = model.seen[len(hello + there) + 1]  # what the model saw for the second message
    assert second[: len(first_prompt)] == first_prompt and EOT in second  # the first turn, closed by <|endoftext|>
    third = model.seen[-2]
    assert third == gpt2_tokenizer.encode(format_input({"instruction": "Once more."}))  # /reset forgot the rest


def test_a_merged_lora_model_rebuilds_from_its_config(tmp_path):
    from gpt.tasks import initial_weights

    model = apply_lora(tiny(tie_weights=True), rank=2, alpha=4)
    with torch.no_grad():
        model.out_head.B.normal_()  # a trained adapter on the tied head
    path = tmp_path / "instruct.ckpt"
    hparams = {"model": model.cfg.to_dict(), "tokenizer": {"name": "gpt2"},
               "task": {"name": "instruct", "lora": {"rank": 2, "alpha": 4}}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hparams},
               path)
    merged, _ = initial_weights(path)
    assert merged.cfg.tie_weights is False  # merging untied the head from the embedding
    rebuilt = GPTModel(merged.cfg)
    rebuilt.load_state_dict(merged.state_dict())
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(rebuilt.eval()(ids), model.eval()(ids), rtol=1e-4, atol=1e-4)
