"""A new text source in one file: the Python files of an installed package, each one document."""

from pathlib import Path
import importlib.util


class PythonFiles:
    def __init__(self, package: str):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"no installed package named {package!r}")
        self.root = Path(next(iter(spec.submodule_search_locations)))

    def documents(self):
        for path in sorted(self.root.rglob("*.py")):
            yield path.read_text(encoding="utf-8")

    def __str__(self) -> str:
        return f"the Python files of {self.root}"
