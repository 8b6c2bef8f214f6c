"""Loading the repository's scripts (examples/, benchmarks/) as modules, so tests call their functions directly."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str):
    """The module of the script at `relative_path` (from the repository root), executed under `name`."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
