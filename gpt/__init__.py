"""A GPT written from scratch to be read, trained with PyTorch Lightning and configured with Hydra."""
