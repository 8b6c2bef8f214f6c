"""One registry mechanism for strategies, model adapters and presets.

A `Registry` maps a name to an object, or to a lazy ``"module:attr"`` string that is imported on first lookup (so
registering the built-in model adapters imports no transformers). Registration refuses duplicates unless
``exist_ok=True``; `get`, `names` and `unregister` are symmetric and every unknown name is a `ValueError` that
lists the known ones. An optional entry-point group lets installed packages add entries without being imported
until they are looked up (the same contract as ``transformers.AutoConfig.register`` / timm's ``register_model``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Dict, List, Optional, Union

Check = Callable[[str, Any], Any]


class Registry:
    """Name -> object (or lazy ``"module:attr"``), with checks, lazy imports and an optional entry-point group.

    Args:
        kind: what the entries are, for messages ("strategy", "adapter", "preset").
        check: called as ``check(name, obj)`` when an object is registered or a lazy entry is first resolved;
            returns the object to store (it may annotate it) or raises `ValueError`.
        entry_point_group: an `importlib.metadata` entry-point group whose entries are added lazily on the first
            lookup; an entry point may not replace a name that is already registered (a warning says so).
        hint: appended to the "unknown name" error (how to register one).

    Example:
        ```python
        >>> fruits = Registry("fruit")
        >>> fruits.register("apple", {"colour": "red"})
        >>> fruits.get("apple")["colour"]
        'red'
        >>> fruits.names()
        ['apple']
        ```
    """

    def __init__(self, kind: str, check: Optional[Check] = None, entry_point_group: Optional[str] = None,
                 hint: str = "") -> None:
        self.kind = kind
        self._check = check
        self.entry_point_group = entry_point_group
        self._hint = hint
        self._entries: Dict[str, Any] = {}
        self._entry_points_loaded = entry_point_group is None

    # ------------------------------------------------------------------------------------------ registration
    def register(self, name: str, obj: Any = None, *, exist_ok: bool = False):
        """Register `obj` (or a ``"module:attr"`` string) under `name`; without `obj`, a decorator.

        Raises:
            ValueError: `name` is not a non-empty string, it is taken and `exist_ok` is False, or `check` refuses.
        """

        def _register(value: Any) -> Any:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.kind} name={name!r} must be a non-empty string")
            self._load_entry_points()
            current = self._entries.get(name)
            if current is not None and current is not value and not exist_ok:
                raise ValueError(f"a {self.kind} named {name!r} is already registered ({_describe(current)}); "
                                 "pass exist_ok=True to replace it")
            self._entries[name] = value if _is_lazy(value) else self._checked(name, value)
            return value

        if obj is not None:
            return _register(obj)
        return _register

    def unregister(self, name: str) -> None:
        """Remove `name`; an unknown name is a `ValueError`."""
        self._load_entry_points()
        if name not in self._entries:
            raise ValueError(self._unknown(name))
        del self._entries[name]

    # ------------------------------------------------------------------------------------------ lookup
    def get(self, name: str) -> Any:
        """The object registered under `name` (a lazy entry is imported and checked once)."""
        self._load_entry_points()
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(self._unknown(name))
        value = self._entries[name]
        if _is_lazy(value):
            value = self._checked(name, _import(value, f"{self.kind} {name!r}"))
            self._entries[name] = value
        return value

    def names(self) -> List[str]:
        """Sorted registered names."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def reload_entry_points(self) -> None:
        """Scan the entry-point group again (after installing a package in a running process)."""
        self._entry_points_loaded = self.entry_point_group is None
        self._load_entry_points()

    # ------------------------------------------------------------------------------------------ internals
    def _checked(self, name: str, value: Any) -> Any:
        return self._check(name, value) if self._check is not None else value

    def _unknown(self, name: Any) -> str:
        text = f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}"
        return f"{text}. {self._hint}" if self._hint else text

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries:
                if self._entries[ep.name] != ep.value:
                    warnings.warn(f"tango_plugin: entry point {ep.name!r} = {ep.value!r} of group "
                                  f"{self.entry_point_group!r} is ignored: a {self.kind} of that name is already "
                                  "registered (use register(..., exist_ok=True) to replace it)", stacklevel=3)
                continue
            self._entries[ep.name] = ep.value  # lazy: imported on first get()


def _is_lazy(value: Any) -> bool:
    return isinstance(value, str) and ":" in value


def _describe(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", type(value).__name__)


def _import(target: str, what: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} points to {target!r}, which cannot be imported: {exc}") from exc


Lazy = Union[str, Any]

__all__ = ["Registry"]
