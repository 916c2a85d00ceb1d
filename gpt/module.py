"""The LightningModule: the loss, the optimizer and its schedule, and what gets logged. The model itself is
``gpt.model.GPTModel``; devices, precision, accumulation, clipping and checkpoints are Lightning's job."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from gpt.checkpoint import rng_states, set_rng_states
from gpt.generation import generate
from gpt.loss import chunked_next_token_loss, next_token_loss
from gpt.model import GPTConfig, GPTModel
from gpt.tokenizer import load_tokenizer


class NonFiniteLossError(ArithmeticError):
    """A loss became NaN or infinite: training stops rather than write a checkpoint of broken weights."""


def check_finite(name: str, values: torch.Tensor, step: int) -> None:
    """Raise NonFiniteLossError if any of ``values`` (one loss, or the micro-batch losses of a step) is NaN or inf."""
    finite = torch.isfinite(values)
    if not finite.all():
        raise NonFiniteLossError(
            f"{name} is {values[~finite].flatten()[0].item()} at step {step}; training stopped and no checkpoint of "
            "this step was written (try a lower optim.lr, more optim.warmup_steps or trainer.gradient_clip_val)"
        )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_with_schedule(module: L.LightningModule, o: dict) -> dict:
    """AdamW over the parameters that train, with weight decay on matrices (linear weights, embeddings) only,
    never on biases or LayerNorm scale/shift; warmup then cosine decay, stepped every optimizer step.
    ``o`` is the ``optim`` config. Shared by every task's LightningModule."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # Lightning's mixed-precision plugin (bf16-mixed, 16-mixed) refuses to clip the gradients of a fused optimizer,
    # which would unscale 16-mixed's gradients only inside its step, after the clipping: there, AdamW runs unfused.
    mixed = isinstance(getattr(module.trainer, "precision_plugin", None), MixedPrecision)
    fused = module.device.type in ("cpu", "cuda") and not (mixed and module.trainer.gradient_clip_val)
    optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), fused=fused)
    total = module.trainer.estimated_stepping_batches
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, o["warmup_steps"], total, o["min_lr_ratio"])
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class GPTLightningModule(L.LightningModule):
    """Next-token pretraining of a GPTModel.

    Hyperparameters are plain dicts so a checkpoint can be read back with ``torch.load(weights_only=True)``
    and without Lightning (see ``gpt.checkpoint``). ``speed`` (conf/speed/) changes how fast the step runs,
    never its maths: ``loss_chunk`` tokens of logits at a time (null: the full logits tensor) and ``compile``
    (torch.compile each transformer block). Without it the step is the plain one.
    """

    def __init__(self, model: dict, optim: dict, tokenizer: dict, sample: dict, speed: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = GPTModel(GPTConfig(**model))
        speed = speed or {"compile": False, "loss_chunk": None}
        self.loss_chunk = speed["loss_chunk"]
        if speed["compile"]:
            # Module.compile() compiles in place: the state dict keeps its names (no `_orig_mod.` prefix), so a
            # checkpoint loads into an uncompiled model. Every block has the same code, so it compiles once.
            for block in self.model.trf_blocks:
                block.compile()
        self.tokens_seen = 0
        self._step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses, on the device
        self._step_start: float | None = None
        self._val_loss_sum = self._val_tokens = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a batch, (B, T) ids and (B, T) targets."""
        if self.loss_chunk is None:
            return next_token_loss(self.model(inputs), targets)
        hidden = self.model.hidden_states(inputs)  # (B, T, C): the head runs inside the chunked loss
        return chunked_next_token_loss(hidden, self.model.out_head.weight, targets, self.loss_chunk)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Nothing here reads a GPU value or logs a Python number (which is copied to the GPU): either would make
        # the CPU wait for the forward pass before it could queue the backward.
        inputs, targets = batch
        loss = self.loss(inputs, targets)
        self._step_losses.append(loss.detach())
        self.tokens_seen += inputs.numel() * self.trainer.world_size
        # sync_dist: the mean over all processes, i.e. the loss of the global batch (rank 0 alone saw 1/N of it).
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # After the backward, before the update, clipping and any checkpoint of this step: a NaN or infinite loss
        # of any accumulated micro-batch stops the run here, with the weights of the last good step.
        check_finite("train/loss", torch.stack(self._step_losses), self.global_step)
        self._step_losses = []

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Tokens/s over each optimizer step (all micro-batches of an accumulation), on all ranks together.
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0 and self._step_start is not None:
            tokens = batch[0].numel() * self.trainer.accumulate_grad_batches * self.trainer.world_size
            self.log("train/tokens_per_sec", tokens / (time.perf_counter() - self._step_start), prog_bar=True)
            self._step_start = None
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/tokens_seen", float(self.tokens_seen))

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum = torch.zeros((), device=self.device)
        self._val_tokens = torch.zeros((), device=self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        loss = self.loss(inputs, targets)
        self._val_loss_sum += loss.detach().float() * targets.numel()
        self._val_tokens += targets.numel()

    def on_validation_epoch_end(self) -> None:
        # Token-weighted mean over the whole val split (a short last batch counts for what it holds).
        loss_sum = self.trainer.strategy.reduce(self._val_loss_sum, reduce_op="sum")
        tokens = self.trainer.strategy.reduce(self._val_tokens, reduce_op="sum")
        val_loss = loss_sum / tokens
        check_finite("val/loss", val_loss, self.global_step)
        # Already the same on every process; sync_dist only tells Lightning so (a no-op average).
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=True)
        self.log("val/perplexity", torch.exp(val_loss), sync_dist=True)
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_sample()

    def sample_text(self, prompt: str, max_new_tokens: int, seed: int) -> str:
        """A short continuation of ``prompt``, sampled with its own RNG so training's random stream is untouched."""
        tokenizer = load_tokenizer(self.hparams.tokenizer)
        idx = torch.tensor([tokenizer.encode(prompt)], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        # Compiled blocks (speed.compile) would recompile for every new KV-cache length: the sample runs eagerly.
        with torch.compiler.set_stance("force_eager"):
            out = generate(
                self.model,
                idx,
                max_new_tokens,
                self.model.cfg.context_length,
                temperature=self.hparams.sample["temperature"],
                top_k=self.hparams.sample["top_k"],
                eos_id=tokenizer.eot_id,
                generator=generator,
            )
        self.model.train(was_training)
        return tokenizer.decode(out[0].tolist())

    def _log_sample(self) -> None:
        s = self.hparams.sample
        text = self.sample_text(s["prompt"], s["max_new_tokens"], seed=self.global_step)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("val/sample", text, self.global_step)

    def configure_optimizers(self):
        return adamw_with_schedule(self, self.hparams.optim)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning saves the weights, optimizer, schedule and loop counters; the data position is the
        # datamodule's state. What is left for an exact resume: every RNG (dropout draws from torch's).
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
