"""The model-adapter interface and its registry (keyed by `config.model_type`).

An adapter knows one model family: where its video tokens are, their grid, how to get the saliency signal and how
to splice the kept tokens back into the LLM input. `tango_plugin.enable` picks the adapter registered for
`model.config.model_type`. Built-in adapters live in `tango_plugin.model_zoo` and are imported on first use; other
packages add theirs through the `tango_plugin.adapters` entry-point group or `register_adapter`.

This module imports neither transformers nor the model zoo at import time.

Example:
    ```python
    >>> import tango_plugin as tango
    >>> @tango.register_adapter("my_model_type")
    ... class MyAdapter(tango.ModelAdapter):
    ...     def forward(self, original, args, kwargs):
    ...         return original(*args, **kwargs)
    ```
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Optional, Tuple, Type, Union

ENTRY_POINT_GROUP = "tango_plugin.adapters"

# model_type -> "module:Class", imported lazily so that `import tango_plugin` never pulls in transformers.
_BUILTIN_ADAPTERS: Dict[str, str] = {
    "llava_onevision": "tango_plugin.model_zoo.llava_onevision:LlavaOnevisionAdapter",
    "qwen2_vl": "tango_plugin.model_zoo.qwen_vl:Qwen2VLAdapter",
    "qwen2_5_vl": "tango_plugin.model_zoo.qwen_vl:Qwen2_5_VLAdapter",
    "qwen3_vl": "tango_plugin.model_zoo.qwen_vl:Qwen3VLAdapter",
}

_REGISTRY: Dict[str, Union[str, Type["ModelAdapter"]]] = {}
_ENTRY_POINTS_LOADED = False


class ModelAdapter:
    """Base class of model adapters: the per-instance logic behind `tango_plugin.enable`.

    `enable` builds one adapter per patched model, calls `validate()` (a config that cannot fit the model raises
    `ValueError` there), then routes the model's `forward` and `generate` through `forward()` / `generate()`.
    The defaults call the original method unchanged, so a subclass overrides only what it prunes.

    Args:
        model: the top-level model (e.g. `...ForConditionalGeneration`), already unwrapped from PEFT.
        config: the `TangoConfig` of this handle.
        state: the handle's `RunState`, where the adapter records what it kept (see `tango_plugin.api`).
        options: adapter-specific options passed to `enable(model, config, **options)`.
    """

    #: the `config.model_type` this class is registered under (set by `register_adapter`)
    model_type: str = ""
    #: saliency sources this adapter can compute ("auto" is always accepted)
    saliency_sources: Tuple[str, ...] = ("global_query",)
    #: adapter options accepted by `__init__` (name -> help text); anything else is a `ValueError`
    options_help: Dict[str, str] = {}

    def __init__(self, model: Any, config: Any, state: Any = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options_help))
        if unknown:
            allowed = ", ".join(f"{k} ({v})" for k, v in self.options_help.items()) or "none"
            raise ValueError(f"{type(self).__name__} got unknown option(s) {unknown}; allowed options: {allowed}")
        self.model = model
        self.config = config
        self.state = state
        self.options = dict(options)

    # -------------------------------------------------------------------------------------------- lifecycle
    def validate(self) -> None:
        """Raise `ValueError` when `self.config` / options cannot apply to `self.model` (called by `enable`)."""
        source = self.config.saliency_source
        if source != "auto" and source not in self.saliency_sources:
            raise ValueError(f"saliency_source={source!r} is not supported by {type(self).__name__}; "
                             f"supported: {['auto', *self.saliency_sources]}")

    def install(self) -> None:
        """Attach hooks the adapter needs on the model (called by `enable` after `validate` passed)."""

    def close(self) -> None:
        """Release whatever the adapter holds and detach what `install` attached (called by `TangoHandle.remove`)."""

    def saliency_source_name(self) -> str:
        """The saliency source actually used ("auto" resolved)."""
        source = self.config.saliency_source
        return self.saliency_sources[0] if source == "auto" else source

    # -------------------------------------------------------------------------------------- patched methods
    def forward(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        """Called instead of `model.forward(*args, **kwargs)`; `original` is the unpatched bound method."""
        return original(*args, **kwargs)

    def generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        """Called instead of `model.generate(*args, **kwargs)`; `original` is the unpatched bound method."""
        return original(*args, **kwargs)


def register_adapter(name: str, cls: Optional[Type[ModelAdapter]] = None, *, exist_ok: bool = False):
    """Register a `ModelAdapter` subclass for `config.model_type == name`; usable as a decorator.

    Args:
        name: the Hugging Face `config.model_type` the adapter handles.
        cls: the adapter class (omit to use as a decorator).
        exist_ok: replace an adapter already registered under `name` instead of raising `ValueError`.

    Example:
        ```python
        @register_adapter("my_model_type")
        class MyAdapter(ModelAdapter): ...
        ```
    """

    def _register(adapter_cls: Type[ModelAdapter]) -> Type[ModelAdapter]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name={name!r} must be a non-empty model_type string")
        if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, ModelAdapter)):
            raise TypeError(f"adapter {name!r}: {adapter_cls!r} is not a ModelAdapter subclass")
        _load_entry_points()
        current = _REGISTRY.get(name, _BUILTIN_ADAPTERS.get(name))
        if current is not None and current is not adapter_cls and not exist_ok:
            shown = current if isinstance(current, str) else current.__name__
            raise ValueError(f"an adapter for model_type {name!r} is already registered ({shown}); "
                             "pass exist_ok=True to replace it")
        adapter_cls.model_type = name
        _REGISTRY[name] = adapter_cls
        return adapter_cls

    if cls is not None:
        return _register(cls)
    return _register


def unregister_adapter(name: str) -> None:
    """Remove an adapter registered with `register_adapter` (built-ins come back on the next lookup)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # An installed package may not override a built-in silently; it must use register_adapter(exist_ok=True).
        if ep.name not in _REGISTRY and ep.name not in _BUILTIN_ADAPTERS:
            _REGISTRY[ep.name] = ep.value


def list_adapters() -> list:
    """Sorted model_types that have an adapter (built-in, registered or from entry points)."""
    _load_entry_points()
    return sorted(set(_BUILTIN_ADAPTERS) | set(_REGISTRY))


def get_adapter(model_type: str) -> Type[ModelAdapter]:
    """The adapter class registered for `model_type`; `ValueError` (listing the supported ones) when none is."""
    _load_entry_points()
    target = _REGISTRY.get(model_type, _BUILTIN_ADAPTERS.get(model_type))
    if target is None:
        raise ValueError(
            f"no Tango adapter for model_type {model_type!r}; supported model types: {list_adapters()}. "
            "To support another model, subclass tango_plugin.ModelAdapter and register it with "
            "@tango_plugin.register_adapter('<model_type>') or the 'tango_plugin.adapters' entry-point group.")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
            raise TypeError(f"{target} (adapter for {model_type!r}) is not a ModelAdapter subclass")
        cls.model_type = model_type
        _REGISTRY[model_type] = cls
        target = cls
    return target


__all__ = ["ModelAdapter", "register_adapter", "unregister_adapter", "get_adapter", "list_adapters",
           "ENTRY_POINT_GROUP"]
