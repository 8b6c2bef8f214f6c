"""`enable` / `enabled` / `TangoHandle`: switch Tango on for one model instance, reversibly.

`enable(model, config)` looks up the adapter for `model.config.model_type`, checks that the config fits the model
and wraps the instance's `forward` and `generate` (instance attributes made with `functools.wraps`, so signatures
that `generate` inspects are kept; modules are never renamed or replaced, so PEFT target names still match).
`handle.remove()` deletes those attributes again: the model is then exactly as before.

Example:
    ```python
    >>> import tango_plugin as tango
    >>> handle = tango.enable(model, tango.TangoConfig(retention_ratio=0.15))
    >>> out = model.generate(**inputs, max_new_tokens=32)      # pruned at prefill, decode unchanged
    >>> handle.report()["samples"][0]["visual_tokens_after"]
    >>> handle.remove()
    >>> with tango.enabled(model, tango.TangoConfig(retention_ratio=0.1)):
    ...     out = model.generate(**inputs)
    ```
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Type, Union

from .adapters import ModelAdapter, get_adapter
from .config import TangoConfig

_HANDLE_ATTR = "_tango_handle"
_PATCHED = ("forward", "generate")


@dataclass
class SampleReport:
    """What one batch row of the last call went through.

    Args:
        sample: row index in the batch.
        videos: number of videos in the row.
        visual_tokens_before: video placeholder tokens the unpruned model would have fed to the LLM.
        visual_tokens_after: video tokens the LLM really received (kept tokens plus newline tokens, if any).
        kept_by_strategy: tokens the strategy kept (`PrunePlan.kept_indices`), without newline tokens.
        ratio_kept: visual_tokens_after / visual_tokens_before (1.0 when nothing was pruned).
        saliency_source: the signal the strategy ranked tokens by ("none" when no saliency was needed).
        prune_seconds: time of saliency hooks, strategy and splice attributed to this row (vision tower excluded).
        pruned: False when this row was passed through unchanged.
        note: why a row was not pruned, or other facts worth knowing (e.g. sink positions not applied).
        images: number of still images in the row pruned as single-frame videos (`prune_images=True`; 0 otherwise).
        image_tokens_before: image placeholder tokens of those images in the unpruned input.
        image_tokens_after: image tokens the LLM really received (not counted in `visual_tokens_*`).
        intra_llm_tokens_after: video tokens left after the intra-LLM stage (`intra_llm_layer`), newline tokens
            included; None when that stage did not run on this call.
    """

    sample: int
    videos: int = 0
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    kept_by_strategy: int = 0
    ratio_kept: float = 1.0
    saliency_source: str = "none"
    prune_seconds: float = 0.0
    pruned: bool = False
    note: str = ""
    images: int = 0
    image_tokens_before: int = 0
    image_tokens_after: int = 0
    intra_llm_tokens_after: Optional[int] = None


@dataclass
class RunState:
    """Per-handle state: the rows of the last pruned call plus running totals. `reset()` clears it."""

    calls: int = 0
    pruned_calls: int = 0
    last: List[SampleReport] = field(default_factory=list)
    total_before: int = 0
    total_after: int = 0
    total_prune_seconds: float = 0.0
    warned: set = field(default_factory=set)

    def reset(self) -> None:
        self.calls = self.pruned_calls = self.total_before = self.total_after = 0
        self.total_prune_seconds = 0.0
        self.last = []

    def record(self, rows: List[SampleReport]) -> None:
        self.pruned_calls += 1
        self.last = rows
        self.total_before += sum(r.visual_tokens_before for r in rows)
        self.total_after += sum(r.visual_tokens_after for r in rows)
        self.total_prune_seconds += sum(r.prune_seconds for r in rows)

    def warn_once(self, key: str, message: str) -> None:
        """Warn the first time `key` happens on this handle (skipped pruning is never silent, nor repeated)."""
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(f"tango_plugin: {message}", stacklevel=4)


class TangoHandle:
    """The undo handle `enable` returns: `remove()`, `report()`, `reset()`.

    Attributes:
        model: the patched model (the base model when a `PeftModel` was given).
        adapter: the `ModelAdapter` instance doing the work.
        config: the `TangoConfig` in use.
        state: the `RunState` (typed, resettable).
    """

    def __init__(self, model: Any, adapter: ModelAdapter, config: TangoConfig, state: RunState,
                 previous: Dict[str, Any]) -> None:
        self.model = model
        self.adapter = adapter
        self.config = config
        self.state = state
        self._previous = previous
        self.active = True

    def remove(self) -> None:
        """Undo `enable`: delete the instance attributes it added and release the adapter. Idempotent."""
        if not self.active:
            return
        self.active = False
        d = self.model.__dict__
        for name in _PATCHED:
            d.pop(name, None)
            if name in self._previous:  # an instance-level method set by someone else before us (e.g. accelerate)
                d[name] = self._previous[name]
        d.pop(_HANDLE_ATTR, None)
        self.adapter.close()

    def reset(self) -> None:
        """Clear the recorded reports and totals."""
        self.state.reset()

    def report(self) -> dict:
        """What the last call pruned, per sample, plus totals since `enable` / `reset`.

        Returns:
            dict with `model_type`, `strategy`, `retention_ratio`, `saliency_source`, `calls`, `pruned_calls`,
            `samples` (list of `SampleReport` dicts of the last call that had video inputs), `total_before`,
            `total_after`, `total_prune_seconds`.
        """
        s = self.state
        sources = sorted({r.saliency_source for r in s.last}) or [self.adapter.saliency_source_name()]
        return {
            "model_type": self.adapter.model_type,
            "adapter": type(self.adapter).__name__,
            "strategy": self.config.strategy,
            "retention_ratio": self.config.retention_ratio,
            "saliency_source": sources[0] if len(sources) == 1 else sources,
            "calls": s.calls,
            "pruned_calls": s.pruned_calls,
            "samples": [dataclasses.asdict(r) for r in s.last],
            "total_before": s.total_before,
            "total_after": s.total_after,
            "total_prune_seconds": s.total_prune_seconds,
            "active": self.active,
        }

    def __enter__(self) -> "TangoHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"TangoHandle({type(self.adapter).__name__}, strategy={self.config.strategy!r}, {state})"


def _unwrap(model: Any) -> Any:
    # PeftModel (and PeftMixedModel) expose the wrapped transformers model through get_base_model().
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model()
    return model


def enable(model: Any, config: Optional[TangoConfig] = None, *,
           adapter: Optional[Union[str, Type[ModelAdapter]]] = None, **options: Any) -> TangoHandle:
    """Turn Tango pruning on for this model instance.

    Args:
        model: a supported Hugging Face model (`LlavaOnevisionForConditionalGeneration`,
            `Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`,
            `Qwen3VLForConditionalGeneration`, or any type with a registered adapter), or a `PeftModel` around one.
        config: the `TangoConfig` (default: `TangoConfig()`).
        adapter: a model_type name or a `ModelAdapter` subclass to use instead of the one registered for
            `model.config.model_type`.
        options: adapter options, e.g. for LLaVA-OV `pool_mode="average"`, `newline="grid"` (LLaVA-Video-style
            checkpoints), `fps=` / `video_timestamps=` (frame times for the temporal terms). An unknown option is
            a `ValueError` listing the allowed ones.

    Returns:
        `TangoHandle`; `handle.remove()` restores the model exactly.

    Raises:
        ValueError: unsupported model (the message lists the supported model types and how to register an
            adapter), a config that cannot fit the model, or a model that is already enabled.
    """
    config = config if config is not None else TangoConfig()
    if not isinstance(config, TangoConfig):
        raise ValueError(f"config must be a TangoConfig; got {type(config).__name__}")
    target = _unwrap(model)
    if _HANDLE_ATTR in getattr(target, "__dict__", {}):
        raise ValueError("tango_plugin is already enabled on this model; call handle.remove() first "
                         f"({target.__dict__[_HANDLE_ATTR]!r})")
    model_type = getattr(getattr(target, "config", None), "model_type", None)
    if adapter is None:
        if model_type is None:
            raise ValueError(f"{type(target).__name__} has no config.model_type, so no adapter can be chosen; "
                             "pass adapter=<ModelAdapter subclass>")
        adapter_cls = get_adapter(model_type)
    elif isinstance(adapter, str):
        adapter_cls = get_adapter(adapter)
    elif isinstance(adapter, type) and issubclass(adapter, ModelAdapter):
        adapter_cls = adapter
    else:
        raise ValueError(f"adapter={adapter!r} must be a model_type name or a ModelAdapter subclass")

    state = RunState()
    instance = adapter_cls(target, config, state, **options)
    instance.validate()
    instance.install()

    previous = {name: target.__dict__[name] for name in _PATCHED if name in target.__dict__}
    handle = TangoHandle(target, instance, config, state, previous)
    for name in _PATCHED:
        original = getattr(target, name)
        route = getattr(instance, name)

        def patched(*args, __original=original, __route=route, **kwargs):
            state.calls += 1
            return __route(__original, args, kwargs)

        # functools.wraps keeps __wrapped__, so inspect.signature (used by generate) sees the original signature.
        target.__dict__[name] = functools.wraps(original)(patched)
    target.__dict__[_HANDLE_ATTR] = handle
    return handle


@contextlib.contextmanager
def enabled(model: Any, config: Optional[TangoConfig] = None, **kwargs: Any) -> Iterator[TangoHandle]:
    """`enable` for the duration of a `with` block; the model is restored on exit, also on error.

    Example:
        ```python
        with tango.enabled(model, tango.TangoConfig(retention_ratio=0.1)) as handle:
            out = model.generate(**inputs)
        print(handle.report())
        ```
    """
    handle = enable(model, config, **kwargs)
    try:
        yield handle
    finally:
        handle.remove()


__all__ = ["enable", "enabled", "TangoHandle", "RunState", "SampleReport"]
