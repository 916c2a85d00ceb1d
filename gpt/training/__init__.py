"""The Lightning glue: one LightningModule and one DataModule that run any task, the callbacks that watch a run,
and the checkpoint plugin. Nothing below this package imports Lightning."""
