"""Preset registry: the paper's settings per model family. Built-in presets live in
`tango_plugin.model_zoo.presets` and are loaded on first use."""

from __future__ import annotations

from typing import Dict

_PRESETS: Dict[str, dict] = {}
_BUILTINS_LOADED = False


def register_preset(name: str, values: dict, *, exist_ok: bool = False) -> None:
    if name in _PRESETS and not exist_ok:
        raise ValueError(f"a preset named {name!r} is already registered; pass exist_ok=True to replace it")
    _PRESETS[name] = dict(values)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import importlib

        importlib.import_module("tango_plugin.model_zoo.presets")


def list_presets() -> list:
    _load_builtins()
    return sorted(_PRESETS)


def get_preset(name: str) -> dict:
    _load_builtins()
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(_PRESETS)}")
    return dict(_PRESETS[name])
