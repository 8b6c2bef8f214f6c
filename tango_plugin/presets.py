"""Preset registry: the paper's settings per model family, by name.

The model families register theirs (`tango_plugin.model_zoo.presets`); a preset is a dict of `TangoConfig`
fields, validated when it is used (`TangoConfig.from_preset`).
"""

from __future__ import annotations

from .registry import Registry


def _check_preset(name: str, values) -> dict:
    if not isinstance(values, dict):
        raise ValueError(f"preset {name!r} must be a dict of TangoConfig fields; got {type(values).__name__}")
    return dict(values)


PRESETS = Registry("preset", check=_check_preset)


def register_preset(name: str, values: dict, *, exist_ok: bool = False) -> None:
    """Register a dict of `TangoConfig` fields under `name` (duplicates refused unless `exist_ok`)."""
    PRESETS.register(name, values, exist_ok=exist_ok)


#: remove a preset (an unknown name is a `ValueError`)
unregister_preset = PRESETS.unregister
#: sorted preset names
list_presets = PRESETS.names


def get_preset(name: str) -> dict:
    """A copy of the preset's fields."""
    return dict(PRESETS.get(name))


__all__ = ["PRESETS", "register_preset", "unregister_preset", "list_presets", "get_preset"]
