"""`enable` / `enabled` / `TangoHandle`: switch Tango on for one model instance, reversibly.

`enable(model, config)` looks up the adapter for `model.config.model_type`, checks that the config fits the model
and wraps the instance's `forward` and `generate` (instance attributes that keep the original `__signature__`, so
the signatures `generate` inspects are kept; modules are never renamed or replaced, so PEFT target names still
match).
Everything attached goes through the handle's `HookRegistry` (`handle.hooks()` lists it); `handle.remove()` or
`disable(model)` takes exactly that off again: the model is then exactly as before.

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
from typing import Any, Callable, Iterator, List, Optional, Type, Union

import torch

from ..config import TangoConfig
from ..knobs import SECTION, knobs_from_config
from .adapter import ModelAdapter, get_adapter
from .hooks import HookRegistry
from .report import PlanObserver, PlanRecord, RunState

_HANDLE_ATTR = "_tango_handle"
_PATCHED = ("forward", "generate")


class TangoHandle:
    """The undo handle `enable` returns: `remove()`, `report()`, `reset()`.

    Attributes:
        model: the patched model (the base model when a `PeftModel` was given).
        adapter: the `ModelAdapter` instance doing the work.
        config: the `TangoConfig` in use.
        state: the `RunState` (typed, resettable).
        registry: the `HookRegistry` of everything attached to the model.
    """

    def __init__(self, model: Any, adapter: ModelAdapter, config: TangoConfig, state: RunState,
                 registry: HookRegistry) -> None:
        self.model = model
        self.adapter = adapter
        self.config = config
        self.state = state
        self.registry = registry
        self.active = True

    def remove(self) -> None:
        """Undo `enable`: take off every entry of the hook registry and release the adapter. Idempotent."""
        if not self.active:
            return
        self.active = False
        self.registry.remove_all()
        self.adapter.close()

    # The patched methods route here (bound methods, so a deep copy of the model routes to its own handle).
    def _route_forward(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        return self._route("forward", original, args, kwargs)

    def _route_generate(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        return self._route("generate", original, args, kwargs)

    def _route(self, name: str, original: Callable, args: tuple, kwargs: dict) -> Any:
        if torch.compiler.is_compiling():
            if self.adapter.media_in_call(args, kwargs):
                # a call with video pixels under torch.compile(model): prune it outside the graph (data-dependent
                # shapes), the way an uncompiled call runs; the compiler resumes after it
                return torch.compiler.disable(self._route_eager)(name, original, args, kwargs)
            # a call without media (e.g. generate's compiled decoding): the original, and no Python state touched,
            # so the compiled graph never depends on our counters
            return original(*args, **kwargs)
        return self._route_eager(name, original, args, kwargs)

    def _route_eager(self, name: str, original: Callable, args: tuple, kwargs: dict) -> Any:
        if not self.adapter.busy:
            self.state.count_call()  # calls the user made; the model's own inner calls are not counted
        return getattr(self.adapter, name)(original, args, kwargs)

    def layout(self) -> Optional[dict]:
        """How the last pruned call's prompt was laid out: `padding_side`, `length` (the shortened, re-padded prompt
        length) and `kept_positions` (per row, the positions of the caller's prompt that the LLM saw, in order).
        Position j of row b in the shortened prompt (logits, attentions, hidden states of that call) is the
        caller's position `kept_positions[b][j - pad]`, with `pad = length - len(kept_positions[b])` on the left
        side and 0 on the right. None before the first pruned call."""
        return self.state.layout

    def hooks(self) -> List[dict]:
        """What is attached to the model, one dict per entry: `name`, `kind` (method, forward_pre_hook,
        forward_hook, attribute) and `target` (the module path or object it sits on). Empty after `remove()`."""
        return self.registry.entries()

    def plans(self) -> List[PlanRecord]:
        """Every strategy call since `enable` / `reset`: the `VisualTokens` it got and the `PrunePlan` it returned
        (`enable(..., record_plans=True)` only; the records hold the tokens' tensors, so clear them with
        `reset()` in long runs)."""
        if not self.state.record_plans:
            raise ValueError("plans are recorded only with enable(model, config, record_plans=True)")
        return list(self.state.plans)

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
    # torch.compile(model) returns an OptimizedModule that calls the module it wraps: enable that one (the wrapper
    # then runs the enabled model; docs/usage.md, "torch.compile")
    inner = getattr(model, "_orig_mod", None)
    if isinstance(model, torch.nn.Module) and isinstance(inner, torch.nn.Module):
        model = inner
    # PeftModel (and PeftMixedModel) expose the wrapped transformers model through get_base_model().
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model()
    return model


def enable(model: Any, config: Optional[TangoConfig] = None, *,
           adapter: Optional[Union[str, Type[ModelAdapter]]] = None, record_plans: bool = False,
           on_plan: Optional[PlanObserver] = None, **options: Any) -> TangoHandle:
    """Turn Tango pruning on for this model instance.

    Args:
        model: a supported Hugging Face model (`LlavaOnevisionForConditionalGeneration`,
            `Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`,
            `Qwen3VLForConditionalGeneration`, or any type with a registered adapter), or a `PeftModel` around one.
        config: the `TangoConfig` (default: `TangoConfig()`).
        adapter: a model_type name or a `ModelAdapter` subclass to use instead of the one registered for
            `model.config.model_type`.
        record_plans: keep every strategy call's tokens and plan (`handle.plans()`): what each call kept.
        on_plan: called with a `PlanRecord` after every strategy call (an observer, e.g. for pictures or logs).
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
    adapter_cls = _adapter_class(target, adapter)
    if not isinstance(record_plans, bool):
        raise ValueError(f"record_plans={record_plans!r} must be True or False")
    if on_plan is not None and not callable(on_plan):
        raise ValueError(f"on_plan={on_plan!r} must be a callable taking a PlanRecord")
    state = RunState(record_plans=record_plans, observers=[on_plan] if on_plan is not None else [])
    registry = HookRegistry(target)
    instance = adapter_cls(target, config, state, hooks=registry, **options)
    instance.validate()
    handle = TangoHandle(target, instance, config, state, registry)
    try:
        instance.install()
        for name in _PATCHED:
            registry.wrap_method(f"method:{name}", target, name, getattr(handle, f"_route_{name}"))
        registry.set_attribute("handle", target, _HANDLE_ATTR, handle)
        if getattr(target, "config", None) is not None and hasattr(target.config, "__dict__"):
            # the config flag: save_pretrained of the enabled model writes this section (docs/usage.md)
            registry.set_attribute("config:tango", target.config, SECTION, knobs_from_config(config, options))
    except Exception:
        handle.remove()  # nothing half-attached stays behind
        raise
    return handle


def _adapter_class(target: Any, adapter: Optional[Union[str, Type[ModelAdapter]]]) -> Type[ModelAdapter]:
    """The adapter `enable` binds: the one registered for the model's `config.model_type`, or the one asked for."""
    if adapter is None:
        model_type = getattr(getattr(target, "config", None), "model_type", None)
        if model_type is None:
            raise ValueError(f"{type(target).__name__} has no config.model_type, so no adapter can be chosen; "
                             "pass adapter=<ModelAdapter subclass>")
        return get_adapter(model_type)
    if isinstance(adapter, str):
        return get_adapter(adapter)
    if isinstance(adapter, type) and issubclass(adapter, ModelAdapter):
        return adapter
    raise ValueError(f"adapter={adapter!r} must be a model_type name or a ModelAdapter subclass")


def get_handle(model: Any) -> Optional[TangoHandle]:
    """The handle of an enabled model (or of the base model of a `PeftModel`), None when Tango is not on."""
    return getattr(_unwrap(model), "__dict__", {}).get(_HANDLE_ATTR)


def disable(model: Any) -> bool:
    """Undo `enable` on this model (or the base model of a `PeftModel`): the free-function twin of
    `handle.remove()`. Returns True when something was removed, False when Tango was not enabled on it."""
    target = _unwrap(model)
    handle = getattr(target, "__dict__", {}).get(_HANDLE_ATTR)
    if handle is None:
        return False
    handle.remove()
    return True


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


__all__ = ["enable", "enabled", "disable", "get_handle", "TangoHandle"]
