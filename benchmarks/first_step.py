"""A callback for benchmarks/data_scale.py: prints the seconds from BENCH_T0 (set by the parent just before it
started train.py) to the end of the first training step."""

import os
import time

import lightning as L


class FirstStep(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == 0:
            print(f"FIRST_STEP {time.time() - float(os.environ['BENCH_T0']):.2f}", flush=True)
