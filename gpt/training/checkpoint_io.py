"""How Lightning writes and reads checkpoint files here: atomically, and with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from gpt.checkpoint import atomic_save, read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Each checkpoint goes to a temporary file, is flushed to disk and renamed into place (``atomic_save``):
    a kill during a save leaves the previous checkpoint as it was. A damaged file is refused on load, naming
    the last good one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu", weights_only=weights_only is not False)
