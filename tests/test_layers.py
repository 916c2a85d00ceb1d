"""The import graph points down only: entry scripts -> glue (gpt/training, gpt/cli) -> tasks (gpt/tasks) -> core.
Read from the source (every import statement, also those inside functions), so a new arrow upwards fails here."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

GPT = ROOT / "gpt"
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
GLUE = ("gpt.training", "gpt.cli", "gpt.server")


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def ring(path: Path) -> str:
    rel = path.relative_to(GPT).parts
    if rel[0] in ("training", "cli.py", "server.py"):
        return "glue"
    return "tasks" if rel[0] == "tasks" else "core"


MODULES = sorted(p for p in GPT.rglob("*.py"))
FORBIDDEN = {"core": FRAMEWORKS + GLUE + ("gpt.tasks",), "tasks": FRAMEWORKS + GLUE, "glue": ()}


@pytest.mark.parametrize("path", [p for p in MODULES if ring(p) != "glue"], ids=lambda p: str(p.relative_to(GPT)))
def test_core_and_tasks_import_nothing_above_them(path):
    bad = {n for n in imports(path) for f in FORBIDDEN[ring(path)] if n == f or n.startswith(f + ".")}
    assert not bad, f"{path.relative_to(ROOT)} ({ring(path)}) imports {sorted(bad)}"


def test_the_tokenizer_imports_no_torch():
    assert not {n for n in imports(GPT / "tokenizer.py") if n.split(".")[0] in ("torch", "numpy")}


def test_the_rings_are_what_this_test_thinks_they_are():
    rings = {str(p.relative_to(GPT)): ring(p) for p in MODULES}
    assert rings["model.py"] == "core" and rings["data/sources/kjv.py"] == "core"
    assert rings["tasks/pretrain.py"] == "tasks" and rings["training/module.py"] == "glue"
    assert "lightning" in imports(GPT / "training" / "module.py")  # the parser sees real imports
