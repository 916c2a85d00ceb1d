"""Callbacks that watch a run; each can be switched off from the command line (conf/callbacks/default.yaml), e.g.
``callbacks.samples=null``. None of them changes what is computed."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from gpt.checkpoint import rng_states, set_rng_states
from gpt.errors import UserError
from gpt.generation import complete


class LastCheckpoint(ModelCheckpoint):
    """``save_last`` every N steps, and also where training ends between two of them (a time budget, a max_steps
    that is not a multiple of N): Lightning's own writes last.ckpt at the end only if it never wrote one, so a
    run's last.ckpt would hold an older state than the run ended with."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class NonFiniteLossError(UserError, ArithmeticError):
    """A loss became NaN or infinite: training stops rather than write a checkpoint of broken weights."""


class NonFiniteGuard(L.Callback):
    """Stops the run when a training loss (any micro-batch of a step, on any process) or the validation loss is
    NaN or infinite. The check runs after the backward and before the update, the clipping and any checkpoint of
    that step, so the last checkpoint holds the weights of the last good step."""

    def __init__(self):
        self._losses: list[torch.Tensor] = []

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        losses, self._losses = torch.stack(self._losses), []
        bad = ~torch.isfinite(losses)
        # Reduced over every process: a NaN on one rank stops them all at the same step, instead of one rank
        # raising while the others wait for it in the next all-reduce.
        if trainer.strategy.reduce_boolean_decision(bool(bad.any()), all=False):
            value = losses[bad].flatten()[0].item() if bad.any() else "non-finite on another process"
            raise NonFiniteLossError(
                f"train/loss is {value} at step {trainer.global_step}; training stopped and no checkpoint of this "
                "step was written (try a lower optim.lr, more optim.warmup_steps or trainer.gradient_clip_val)"
            )

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not torch.isfinite(loss):
            raise NonFiniteLossError(f"val/loss is {loss.item()} at step {trainer.global_step}; training stopped "
                                     "(try a lower optim.lr, more optim.warmup_steps or trainer.gradient_clip_val)")


class Throughput(L.Callback):
    """Logs train/tokens_per_sec over each optimizer step (all micro-batches, all processes), train/tokens_seen
    and the learning rate, train/lr."""

    def __init__(self):
        self._start: tuple[float, int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._start is None:
            self._start = (time.perf_counter(), pl_module.tokens_seen)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 and self._start is not None:
            start, seen = self._start
            pl_module.log("train/tokens_per_sec", (pl_module.tokens_seen - seen) / (time.perf_counter() - start),
                          prog_bar=True)
            self._start = None
        pl_module.log("train/tokens_seen", float(pl_module.tokens_seen))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # The lr this update uses (after on_train_batch_end the schedule has already moved to the next step's).
        pl_module.log("train/lr", optimizer.param_groups[0]["lr"])


class TextSamples(L.Callback):
    """After each validation, a continuation of ``prompt`` goes to TensorBoard (TEXT tab); at the end of training
    the last one is printed. Sampled with its own RNG, so training's random stream is untouched. Only for tasks
    whose model writes text."""

    def __init__(self, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        self.prompt, self.max_new_tokens, self.temperature, self.top_k = prompt, max_new_tokens, temperature, top_k

    def sample(self, pl_module, seed: int) -> str:
        model, task = pl_module.model, pl_module.task
        generator = torch.Generator(device=pl_module.device).manual_seed(seed)
        was_training = model.training
        model.eval()
        # Compiled blocks (speed.compile) would recompile for every new KV-cache length: the sample runs eagerly.
        with torch.compiler.set_stance("force_eager"):
            text = complete(model, pl_module.tokenizer, task.prompt(self.prompt), self.max_new_tokens,
                            temperature=self.temperature, top_k=self.top_k, generator=generator)
        model.train(was_training)
        return self.prompt + text

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "generate" not in pl_module.task.loaded_by:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("val/sample", self.sample(pl_module, seed=trainer.global_step), trainer.global_step)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        if "generate" in pl_module.task.loaded_by:
            print(f"sample: {self.sample(pl_module, seed=trainer.global_step)!r}")


class RNGState(L.Callback):
    """Saves every random generator training draws from (dropout uses torch's) in each checkpoint and puts them
    back on resume: with the data position (the DataModule's state), what makes a resumed run exact."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
