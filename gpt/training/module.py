"""The LightningModule: the task's loss, the optimizer and the step. The model is a ``gpt.model.GPTModel`` adapted
by the task; devices, precision, accumulation, clipping and checkpoints are Lightning's job, and whatever watches a
run (speed, samples, non-finite losses, RNG state) is a callback (``gpt.training.callbacks``)."""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType

from gpt.model import GPTModel
from gpt.optim import TimeBudget, optimizer_with_schedule, set_optim_values
from gpt.tasks import task_from_config
from gpt.tokenizer import load_tokenizer


class TaskModule(L.LightningModule):
    """Trains ``task`` (a plain task config, see ``gpt.tasks``) on a GPTModel built from ``model`` and loaded with
    ``base_state`` (the weights it starts from; not a hyperparameter).

    Hyperparameters are plain dicts, so ``gpt.tasks.load_trained`` rebuilds the model from a checkpoint with
    ``torch.load(weights_only=True)`` and without Lightning. ``speed`` (conf/speed/) changes how fast the step runs,
    never its maths: ``loss_chunk`` tokens of logits at a time and ``compile`` (torch.compile each block).
    With a ``time_budget`` training stops when it is spent and the learning rate decays over it, not over max_steps.
    """

    def __init__(self, model: dict, optim: dict, tokenizer: dict, task: dict, speed: dict | None = None,
                 base_state: dict | None = None, time_budget: TimeBudget | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["base_state", "time_budget"])
        self.time_budget = time_budget
        self.task = task_from_config(task)
        speed = speed or {"compile": False, "loss_chunk": None}
        self.task.loss_chunk = speed["loss_chunk"]
        base = GPTModel.from_config(model)
        if base_state is not None:
            base.load_state_dict(base_state)
        self.model = self.task.adapt(base)
        if speed["compile"]:
            # Module.compile() compiles in place: the state dict keeps its names (no `_orig_mod.` prefix), so a
            # checkpoint loads into an uncompiled model. Every block has the same code, so it compiles once.
            for block in self.model.trf_blocks:
                block.compile()
        self.tokenizer = load_tokenizer(tokenizer)
        self.tokens_seen = 0
        self._sums: dict[str, list[torch.Tensor]] = {}  # this epoch's metric -> [weighted sum, weight]
        self.test_records: list[dict] = []
        self.run_identity: dict = {}  # the settings a resumed run must keep (train.py: setup.run_identity)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # Nothing here reads a GPU value or logs a Python number (which is copied to the GPU): either would make
        # the CPU wait for the forward pass before it could queue the backward.
        metrics = self.task.step(self.model, batch)
        self.tokens_seen += self.task.tokens(batch) * self.trainer.world_size
        for name, (value, _) in metrics.items():
            # sync_dist: the mean over all processes, i.e. the global batch's (rank 0 alone saw 1/N of it).
            self.log(f"train/{name}", value, prog_bar=True, sync_dist=True)
        return metrics["loss"][0]

    # --- validation and test: weighted means over the whole split, on every process together -----------
    def _accumulate(self, metrics) -> None:
        for name, (value, weight) in metrics.items():
            weight = torch.as_tensor(weight, device=self.device, dtype=torch.float32)
            total = self._sums.setdefault(name, [torch.zeros((), device=self.device), torch.zeros((), device=self.device)])
            total[0] += value.detach().float() * weight
            total[1] += weight

    def _log_means(self, split: str) -> None:
        means = {}
        for name, (total, weight) in sorted(self._sums.items()):
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            means[name] = total / self.trainer.strategy.reduce(weight, reduce_op="sum")
        self._sums = {}
        # Already the same on every process; sync_dist only tells Lightning so (a no-op average).
        for name, value in self.task.epoch_metrics(means).items():
            self.log(f"{split}/{name}", value, prog_bar=name == "loss", sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def validation_step(self, batch, batch_idx: int) -> None:
        self._accumulate(self.task.step(self.model, batch))

    def on_validation_epoch_end(self) -> None:
        self._log_means("val")

    def on_test_epoch_start(self) -> None:
        self._sums, self.test_records = {}, []

    def test_step(self, batch, batch_idx: int) -> None:
        out = self.task.test_step(self.model, batch, self.tokenizer)
        if isinstance(out, list):
            self.test_records.extend(out)
        else:
            self._accumulate(out)

    def on_test_epoch_end(self) -> None:
        if self._sums:
            self._log_means("test")
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            self.test_records = self._gather_in_order(self.test_records)

    def _gather_in_order(self, records: list[dict]) -> list[dict]:
        """Every process's test records in the test split's order. Lightning's DistributedSampler gives process r
        the items r, r + N, ... of the split padded to a multiple of N: taking them back in turn, then cutting the
        padding, restores the split."""
        shards: list[list[dict]] = [[] for _ in range(self.trainer.world_size)]
        dist.all_gather_object(shards, records)
        ordered = [shard[i] for i in range(len(shards[0])) for shard in shards if i < len(shard)]
        return ordered[: len(self.trainer.datamodule.splits.test)]

    def _bf16_mixed(self) -> bool:
        """Lightning's mixed-precision plugin at bf16: autocast without loss scaling (not FSDP's own plugin)."""
        plugin = getattr(self.trainer, "precision_plugin", None)
        return isinstance(plugin, MixedPrecision) and plugin.precision == "bf16-mixed"

    def configure_optimizers(self):
        # A fused AdamW unscales 16-mixed's gradients only inside its step, after any clipping: with 16-mixed and
        # clipping, AdamW runs unfused. bf16-mixed has no scaling, so it stays fused (configure_gradient_clipping).
        scaled = isinstance(getattr(self.trainer, "precision_plugin", None), MixedPrecision) and not self._bf16_mixed()
        fused = self.device.type in ("cpu", "cuda") and not (scaled and self.trainer.gradient_clip_val)
        total = None if self.time_budget else self.trainer.estimated_stepping_batches
        hidden = [m.weight for m in self.model.trf_blocks.modules() if isinstance(m, torch.nn.Linear)]
        optimizer, schedule = optimizer_with_schedule(self.parameters(), self.hparams.optim, total, fused,
                                                      self.time_budget, hidden)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients at any precision, as if
        # they were scaled; bf16's are not, so they go to the plain plugin's clipping, which the check guards.
        if not (self._bf16_mixed() and gradient_clip_val):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")  # Trainer's default: None = norm
        Precision.clip_gradients(self.trainer.precision_plugin, optimizer, gradient_clip_val, algorithm)

    # --- a time budget: stop when it is spent, keeping back the time the last validation will take ---------
    def on_train_start(self) -> None:
        # On resume the restored optimizer state holds the old lr, betas and weight decay: the configured ones
        # (changed with resume.allow) take effect from the first resumed step, and train/lr logs them.
        set_optim_values(self.trainer.optimizers[0], self.lr_schedulers(), self.hparams.optim)
        if self.time_budget:
            self.time_budget.start()
            self._step_s, self._val_s, self._clock = None, None, time.monotonic()
            limit = self.trainer.limit_val_batches
            n_val = limit if isinstance(limit, int) else limit * len(self.trainer.datamodule.val_dataloader())
            self._val_batches = int(n_val)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.time_budget:
            return
        now, last = time.monotonic(), self._clock
        if batch_idx > 0:  # the first step pays for warm-up: it says little about the next ones
            self._step_s = now - last if self._step_s is None else 0.9 * self._step_s + 0.1 * (now - last)
        self._clock = now
        # Until a validation has been timed: a forward pass is about a third of a training step.
        if self._val_s is not None:
            self.time_budget.tail_s = self._val_s
        elif self._step_s is not None:
            self.time_budget.tail_s = self._step_s * self._val_batches / 3
        # Every process decides together (rank 0's clock), so none waits in an all-reduce for one that stopped.
        if self.trainer.strategy.broadcast(self.time_budget.done()):
            self.trainer.should_stop = True

    def on_validation_start(self) -> None:
        self._val_started = time.monotonic()

    def on_validation_end(self) -> None:
        if self.time_budget and not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self._val_s = time.monotonic() - self._val_started
            self._clock = time.monotonic()  # the next step's time starts now

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["run_identity"] = self.run_identity
        if self.time_budget:
            checkpoint["time_budget"] = self.time_budget.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        if self.time_budget and "time_budget" in checkpoint:
            self.time_budget.load_state_dict(checkpoint["time_budget"])
