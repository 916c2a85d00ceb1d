"""Fine-tuning end to end through train.py, classify.py and generate.py (subprocesses), from a checkpoint of ours."""

import json
import re

import pytest
import torch

from gpt.data.sources.alpaca import format_input
from gpt.generation import generate
from gpt.lora import LoRALinear
from gpt.tasks import load_trained
from gpt.tasks.classify import last_token_logits
from gpt.model import GPTConfig, GPTModel
from test_entrypoints import run

MODEL = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0, qkv_bias=False,
             tie_weights=True)
QUICK = ["optim.warmup_steps=2", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
         "data.batch_size=4"]


def val_loss_before_and_after(stdout: str) -> tuple[float, float]:
    before = float(re.search(r"^before training: .*val/loss ([0-9.]+)", stdout, re.M).group(1))
    after = float(re.search(r"^val/loss: (\S+)", stdout, re.M).group(1))
    return before, after


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny language-model checkpoint in the layout train.py writes (written directly: no training needed)."""
    tmp = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(**MODEL))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp / "pretrained.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model": MODEL, "tokenizer": {"name": "gpt2"}}}, path)
    return tmp, path, model


def test_classify_from_our_checkpoint_then_label_texts(pretrained):
    tmp, init, base = pretrained
    data = tmp / "texts.tsv"
    spam = [f"spam\tWIN a FREE prize {i}! Call 0800 now" for i in range(20)]
    ham = [f"ham\tsee you at lunch on day {i}" for i in range(40)]
    data.write_text("\n".join(spam + ham) + "\n", encoding="utf-8")
    run_dir = tmp / "classify"
    out = run("train.py", "task=classify", f"init_from={init}", f"data.path={data}", *QUICK,
              f"hydra.run.dir={run_dir}").stdout
    assert "train/val/test [28, 4, 8]" in out  # balanced 20 / 20, split 70/10/20
    assert "test/acc:" in out and "before training: val/acc" in out
    before, after = val_loss_before_and_after(out)
    assert after < before

    model, tokenizer, task = load_trained(run_dir)
    assert task.settings["labels"] == ["ham", "spam"] and model.out_head.weight.shape == (2, 32)
    torch.testing.assert_close(model.tok_emb.weight, base.tok_emb.weight)  # started from init_from; frozen there

    labeled = run("classify.py", f"ckpt={run_dir}", input_text="WIN a FREE prize! Call now\nsee you at lunch\n")
    lines = [line.split("\t") for line in labeled.stdout.splitlines()]
    assert [text for *_, text in lines] == ["WIN a FREE prize! Call now", "see you at lunch"]
    for label, p, text in lines:  # what the model itself says, computed here
        ids = tokenizer.encode(text)
        with torch.no_grad():
            probs = torch.softmax(last_token_logits(model(torch.tensor([ids])), torch.tensor([len(ids)]))[0], dim=-1)
        assert label == task.settings["labels"][int(probs.argmax())] and p == f"{float(probs.max()):.3f}"
    refused = run("generate.py", f"ckpt={run_dir}", "prompt=Hi", check=False)
    assert refused.returncode == 1 and "holds a classify model, which generate.py cannot use" in refused.stderr


def test_instruct_with_lora_writes_test_answers_and_chats(pretrained):
    tmp, init, _ = pretrained
    data = tmp / "records.json"
    records = [{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}."} for i in range(40)]
    data.write_text(json.dumps(records), encoding="utf-8")
    run_dir = tmp / "instruct"
    out = run("train.py", "task=instruct", f"init_from={init}", f"data.path={data}", "task.lora.rank=2",
              "task.response_tokens=3", *QUICK, f"hydra.run.dir={run_dir}").stdout
    assert "train/val/test [34, 4, 2]" in out and "before training: val/loss" in out
    before, after = val_loss_before_and_after(out)
    assert after < before

    answers = json.loads((run_dir / "checkpoints" / "test_responses.json").read_text(encoding="utf-8"))
    assert [a["instruction"] for a in answers] == ["Add 38 and 38.", "Add 39 and 39."]
    model, tokenizer, _ = load_trained(run_dir)  # adapters merged: a plain GPTModel
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    for answer in answers:  # each answer is the model's own greedy reply of at most 3 tokens, recomputed here
        ids = tokenizer.encode(format_input(answer))
        out = generate(model, torch.tensor([ids]), 3, MODEL["context_length"], eos_id=tokenizer.eot_id)[0, len(ids):]
        assert answer["model_response"] == tokenizer.decode([t for t in out.tolist() if t != tokenizer.eot_id]).strip()

    proc = run("generate.py", f"ckpt={run_dir}", "chat=true", "max_new_tokens=4", "temperature=0",
               input_text="What is 2 and 2?\n/reset\nHello\n/exit\n")
    assert proc.stdout.count("assistant> ") == 2 and "(conversation forgotten)" in proc.stdout
    assert proc.stdout.rstrip().endswith("bye")  # a clean /exit; run() checked the exit status
