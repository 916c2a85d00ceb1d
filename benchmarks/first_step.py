"""A callback for benchmarks/data_scale.py: prints the seconds from BENCH_T0 (set by the parent just before it
started train.py) to the end of the first training step, and each process's peak RSS when training ends."""

import os
import resource
import time

import lightning as L


class FirstStep(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == 0 and trainer.is_global_zero:
            print(f"FIRST_STEP {time.time() - float(os.environ['BENCH_T0']):.2f}", flush=True)

    def on_train_end(self, trainer, module):
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"PEAK_RSS {trainer.global_rank} {peak_mb:.0f}", flush=True)
