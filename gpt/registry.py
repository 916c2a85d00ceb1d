"""Choosing a class by name: a short name from a table of built-in choices, or a dotted import path
(``my_package.my_module.MyClass``) for one of your own. Plain Python, so a checkpoint that names a class can be
rebuilt without Hydra."""

from __future__ import annotations

import importlib

from gpt.errors import UserError


def locate(path: str) -> type:
    """The object at a dotted import path, e.g. ``gpt.tasks.pretrain.Pretrain``."""
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot import {path!r} ({e}); give a dotted path module.Class importable from here") from None


def choose(kind: str, name: str, builtin: dict[str, type]) -> type:
    """``builtin[name]``, or the class at the dotted path ``name``; ``kind`` names the config key in errors."""
    if name in builtin:
        return builtin[name]
    if "." not in name:
        raise UserError(f"{kind} must be one of {', '.join(builtin)} or a dotted path to a class, got {name!r}")
    return locate(name)
