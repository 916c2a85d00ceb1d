import math

import pytest
import torch

from gpt.loss import language_model_loss, next_token_loss
from gpt.model import GPTConfig, GPTModel
from gpt.optim import warmup_decay
from gpt.training.module import TaskModule

MODEL = dict(vocab_size=50257, context_length=16, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=True,
             tie_weights=True)
OPTIM = dict(name="adamw", lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95], warmup_steps=10, min_lr_ratio=0.1,
             decay="cosine", muon_lr_scale=1.0)
PRETRAIN = {"_target_": "gpt.tasks.pretrain.Pretrain"}


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    f = lambda s: warmup_decay(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # half way through the cosine: midway between 1 and the floor
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_loss_is_mean_next_token_cross_entropy():
    logits = torch.zeros(2, 3, 5)
    logits[..., 1] = math.log(4.0)  # p(token 1) = 4/8 = 0.5, every other token 1/8
    assert next_token_loss(logits, torch.ones(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(2))
    assert next_token_loss(logits, torch.zeros(2, 3, dtype=torch.long)).item() == pytest.approx(math.log(8))


def test_weight_decay_applies_to_matrices_only():
    module = TaskModule(MODEL, OPTIM, {"name": "gpt2"}, PRETRAIN)
    decay, no_decay = [
        {id(p) for p in group} for group in (
            [p for p in module.parameters() if p.dim() >= 2], [p for p in module.parameters() if p.dim() < 2])
    ]

    class FakeTrainer:
        estimated_stepping_batches = 100

    module.trainer = FakeTrainer()  # type: ignore[assignment]
    opt = module.configure_optimizers()["optimizer"]
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups[0.1] == decay and groups[0.0] == no_decay
    m = module.model
    assert id(m.tok_emb.weight) in decay and id(m.trf_blocks[0].att.W_query.weight) in decay
    assert id(m.trf_blocks[0].att.W_query.bias) in no_decay and id(m.final_norm.scale) in no_decay
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(module.parameters()))  # the tied head appears once


def test_chunked_loss_in_the_module_is_the_plain_loss():
    torch.manual_seed(0)
    plain = TaskModule(MODEL, OPTIM, {"name": "gpt2"}, PRETRAIN)
    lean = TaskModule(MODEL, OPTIM, {"name": "gpt2"}, PRETRAIN, speed={"compile": False, "loss_chunk": 5})
    lean.load_state_dict(plain.state_dict())
    idx, targets = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    loss = lambda m: m.task.step(m.model, (idx, targets))["loss"][0].item()  # noqa: E731
    assert lean.task.loss_chunk == 5 and plain.task.loss_chunk is None
    assert loss(lean) == pytest.approx(loss(plain), rel=1e-6)
    assert loss(plain) == pytest.approx(language_model_loss(plain.model, idx, targets, None).item())


def test_checkpoint_of_a_compiled_model_loads_into_an_uncompiled_one(gpt2_tokenizer, tmp_path, monkeypatch):
    import functools

    import lightning as L

    from gpt.data.sources.text_file import TextFile
    from gpt.tasks import load_trained
    from gpt.tasks.pretrain import Pretrain
    from gpt.training.datamodule import TaskDataModule

    # The real compiler (inductor) takes minutes on this CPU; aot_eager wraps the blocks the same way, quickly.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    module = TaskModule(MODEL, OPTIM, gpt2_tokenizer.to_config(), PRETRAIN, speed={"compile": True, "loss_chunk": 8})
    assert all(block._compiled_call_impl is not None for block in module.model.trf_blocks)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("In the beginning God created the heaven and the earth. " * 40)
    settings = dict(max_length=16, stride=16, val_ratio=0.2, cache_dir=tmp_path)
    data = TaskDataModule(Pretrain(), TextFile(str(corpus)), gpt2_tokenizer, settings, batch_size=2, seed=0)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")

    state = torch.load(tmp_path / "compiled.ckpt", weights_only=True)["state_dict"]
    # The names of a plain GPTModel's tensors, nothing added by compiling (a wrapper would add _orig_mod.):
    assert {k.removeprefix("model.") for k in state} == set(GPTModel(GPTConfig(**MODEL)).state_dict())
    model, _, _ = load_trained(tmp_path / "compiled.ckpt")  # a plain GPTModel
    idx = torch.randint(0, 50257, (1, 16))
    assert torch.allclose(model(idx), module.model.eval()(idx), atol=1e-5)



@pytest.mark.parametrize("algorithm", [None, "value"])
def test_bf16_mixed_keeps_adamw_fused_and_steps_with_clipped_gradients(gpt2_tokenizer, tmp_path, algorithm):
    """bf16 has no loss scaling: the fused AdamW's gradients are final before its step, and they are clipped (by
    their norm, the default, or each by value)."""
    import lightning as L

    from gpt.data.sources.text_file import TextFile
    from gpt.tasks.pretrain import Pretrain
    from gpt.training.datamodule import TaskDataModule

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("In the beginning God created the heaven and the earth. " * 40)
    settings = dict(max_length=16, stride=16, val_ratio=0.2, cache_dir=tmp_path)
    data = TaskDataModule(Pretrain(), TextFile(str(corpus)), gpt2_tokenizer, settings, batch_size=2, seed=0)
    module = TaskModule(MODEL, OPTIM, gpt2_tokenizer.to_config(), PRETRAIN)
    norms = []

    def record(optimizer, args, kwargs):  # after optimizer.step(), whose closure ran the backward and the clipping
        grads = [p.grad.float() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        by_value = algorithm == "value"
        size = max(g.abs().max() for g in grads) if by_value else torch.stack([g.norm() for g in grads]).norm()
        norms.append(size.item())

    class Watch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_post_hook(record)

    trainer = L.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.01,
                        gradient_clip_algorithm=algorithm, callbacks=[Watch()])
    trainer.fit(module, datamodule=data)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert len(norms) == 3 and all(n <= 0.01 * 1.001 for n in norms)


def test_16_mixed_with_clipping_runs_adamw_unfused():
    """16-mixed's gradients stay scaled until a fused AdamW's own step, after Lightning's clipping would run."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    module = TaskModule(MODEL, OPTIM, {"name": "gpt2"}, PRETRAIN)

    class FakeTrainer:
        estimated_stepping_batches, gradient_clip_val = 100, 1.0
        precision_plugin = MixedPrecision("16-mixed", "cpu")

    module.trainer = FakeTrainer()  # type: ignore[assignment]
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is False
    FakeTrainer.gradient_clip_val = None
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is True


def test_optim_name_muon_gives_the_blocks_linear_weights_to_muon():
    from gpt.optim import Chained

    module = TaskModule(MODEL, OPTIM | {"name": "muon"}, {"name": "gpt2"}, PRETRAIN)

    class FakeTrainer:
        estimated_stepping_batches = 100

    module.trainer = FakeTrainer()  # type: ignore[assignment]
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, Chained) and isinstance(opt.optimizers[1], torch.optim.Muon)
    block = module.model.trf_blocks[0]
    assert {id(p) for p in opt.optimizers[1].param_groups[0]["params"]} == {
        id(m.weight) for m in block.modules() if isinstance(m, torch.nn.Linear)}
