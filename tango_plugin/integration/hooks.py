"""One hook mechanism: everything tango_plugin attaches to a model, registered by name on its handle.

A `HookRegistry` belongs to one enabled model. Each entry is one reversible change: an instance method wrapped
(`wrap_method`), a torch forward (pre-)hook (`add_forward_pre_hook` / `add_forward_hook`) or an attribute set on
an object (`set_attribute`; the previous value, or its absence, is restored). `remove(name)` undoes one entry,
`remove_all()` undoes every entry in reverse order, and `entries()` lists what is attached (the handle's
`hooks()`). Hooks that live only for one call (the saliency hooks on the vision tower) are added inside
`transient()`, which removes them when the call's `with` block ends, also on error.

This follows accelerate's `add_hook_to_module` / `remove_hook_from_module` and diffusers' `HookRegistry`: named,
listed, removable one by one, never a global monkey patch. Unlike closures, every piece here is plain data or a
bound method, so `copy.deepcopy(model)` gives a copy with its own working patch (its own handle, adapter and
hooks, bound to the copy) and `pickle` round-trips an enabled model.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch


class _Missing:
    """"No instance attribute was there" (one object, also after deepcopy and pickle)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self):
        return "MISSING"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


MISSING = _Missing()
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called")


@dataclass
class HookEntry:
    """One thing attached to the model, and what undoes it.

    Args:
        name: unique name on the registry (e.g. "method:generate", "intra_llm:reduce:layer3").
        kind: "method", "forward_pre_hook", "forward_hook" or "attribute".
        target: the object it is attached to (a module, the model, a config).
        detail: the attribute or method name, when there is one.
        previous: the instance attribute it replaced (`MISSING`: none), for "method" / "attribute".
        hook_id: the torch hook id, for the hook kinds.
    """

    name: str
    kind: str
    target: Any
    detail: str
    previous: Any = MISSING
    hook_id: Optional[int] = None

    def undo(self) -> None:
        if self.hook_id is not None:
            for table in _HOOK_DICTS:  # what torch's RemovableHandle.remove does, by id
                getattr(self.target, table, {}).pop(self.hook_id, None)
            return
        d = self.target.__dict__
        if self.previous is MISSING:
            d.pop(self.detail, None)
        else:
            d[self.detail] = self.previous


class MethodPatch:
    """The callable that replaces ``owner.<method>``: ``route(original, args, kwargs)``.

    `original` is looked up on each call (the instance attribute that was there before, else the class's method
    bound to `owner`), so a deep copy of the model calls its own weights. `__signature__` is the original's, so
    `inspect.signature` (which `generate` uses to filter model kwargs) is unchanged.
    """

    def __init__(self, owner: Any, method: str, route: Callable[[Callable, tuple, dict], Any], previous: Any) -> None:
        self.owner, self.method, self.route, self.previous = owner, method, route, previous
        original = self.original()
        self.__name__ = getattr(original, "__name__", method)
        self.__qualname__ = getattr(original, "__qualname__", method)
        self.__doc__ = getattr(original, "__doc__", None)

    @property
    def __signature__(self) -> inspect.Signature:
        # computed on access (a stored Signature would carry typing objects that do not pickle)
        return inspect.signature(self.original())

    def original(self) -> Callable:
        if self.previous is not MISSING:
            return self.previous
        # the class's function bound to the owner, found in the class dicts: `getattr(type(owner), m).__get__` is
        # what this means in Python, but torch.compile's tracer resolves that to `owner.<method>`, the instance
        # attribute, i.e. this patch again (endless recursion under `torch.compile(model)`)
        for klass in type(self.owner).__mro__:
            if self.method in klass.__dict__:
                return functools.partial(klass.__dict__[self.method], self.owner)
        raise AttributeError(f"{type(self.owner).__name__} has no method {self.method!r}")

    def __call__(self, *args, **kwargs):
        return self.route(self.original(), args, kwargs)

    def __repr__(self) -> str:
        return f"<tango_plugin patch of {type(self.owner).__name__}.{self.method}>"


class HookRegistry:
    """The named, reversible changes tango_plugin made to one model.

    Args:
        model: the model the entries belong to (used to name the modules they sit on).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._entries: Dict[str, HookEntry] = {}

    # ------------------------------------------------------------------------------------------ adding
    def wrap_method(self, name: str, obj: Any, method: str, route: Callable[[Callable, tuple, dict], Any]) -> None:
        """Make ``obj.<method>(*args, **kwargs)`` call ``route(original, args, kwargs)``, as an instance attribute
        (a `MethodPatch`). An instance attribute set by someone else before (e.g. accelerate's hooks) is what
        `original` calls, and it is restored on removal. `route` should be a bound method (deepcopy-safe)."""
        previous = obj.__dict__.get(method, MISSING)
        self.set_attribute(name, obj, method, MethodPatch(obj, method, route, previous), kind="method")

    def set_attribute(self, name: str, obj: Any, attr: str, value: Any, kind: str = "attribute") -> None:
        """``obj.<attr> = value`` in the instance's own `__dict__`; removal restores the previous instance value
        or deletes the attribute when there was none."""
        self._check_free(name)
        d = obj.__dict__
        previous = d.get(attr, MISSING)
        d[attr] = value
        self._entries[name] = HookEntry(name, kind, obj, attr, previous=previous)

    def add_forward_pre_hook(self, name: str, module: torch.nn.Module, fn: Callable, with_kwargs: bool = True) -> None:
        """`module.register_forward_pre_hook(fn, with_kwargs=...)` under `name`."""
        self._check_free(name)
        handle = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
        self._entries[name] = HookEntry(name, "forward_pre_hook", module, "", hook_id=handle.id)

    def add_forward_hook(self, name: str, module: torch.nn.Module, fn: Callable) -> None:
        """`module.register_forward_hook(fn)` under `name`."""
        self._check_free(name)
        handle = module.register_forward_hook(fn)
        self._entries[name] = HookEntry(name, "forward_hook", module, "", hook_id=handle.id)

    @contextlib.contextmanager
    def transient(self, prefix: str) -> Iterator["TransientHooks"]:
        """Hooks for the duration of one `with` block (one encoder call); removed on exit, also on error."""
        scope = TransientHooks(self, prefix)
        try:
            yield scope
        finally:
            scope.close()

    # ------------------------------------------------------------------------------------------ removing
    def remove(self, name: str) -> None:
        """Undo one entry; an unknown name is a `ValueError` listing the attached ones."""
        if name not in self._entries:
            raise ValueError(f"no hook named {name!r} is attached; attached: {self.names()}")
        self._entries.pop(name).undo()

    def remove_all(self) -> None:
        """Undo every entry, newest first."""
        for name in reversed(list(self._entries)):
            self._entries.pop(name).undo()

    # ------------------------------------------------------------------------------------------ listing
    def names(self) -> List[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> List[dict]:
        """One dict per entry: name, kind and where it sits (module path inside the model, or the object type)."""
        paths = None
        rows = []
        for e in self._entries.values():
            if isinstance(e.target, torch.nn.Module):
                if paths is None:  # named_modules only when needed: listing is rare, adding is per call
                    paths = {id(m): n for n, m in self.model.named_modules()} if isinstance(
                        self.model, torch.nn.Module) else {}
                where = paths.get(id(e.target), type(e.target).__name__) or type(e.target).__name__
            else:
                where = type(e.target).__name__
            rows.append({"name": e.name, "kind": e.kind, "target": where + (f".{e.detail}" if e.detail else "")})
        return rows

    def _check_free(self, name: str) -> None:
        if name in self._entries:
            raise ValueError(f"a hook named {name!r} is already attached")


_TRANSIENT_IDS = itertools.count()


class TransientHooks:
    """Hooks added for one call through a `HookRegistry` (see `HookRegistry.transient`).

    Hook functions run under `torch.no_grad()` (they compute signals, never gradients) and the time spent in them
    is summed in `seconds`. Their return value is ignored: they never change the module's inputs or outputs. They
    act only in the thread that added them: another thread's call through the same module, at the same time, is
    not theirs (integration/threads.py).
    """

    def __init__(self, registry: HookRegistry, prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix
        self.seconds = 0.0
        self._names: List[str] = []
        self._thread = threading.get_ident()

    def _timed(self, fn: Callable) -> Callable:
        def hook(*args, **kwargs):
            if threading.get_ident() != self._thread:
                return None
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
            return None

        return hook

    def _name(self) -> str:
        name = f"{self.prefix}:{next(_TRANSIENT_IDS)}"  # unique across the calls of all threads
        self._names.append(name)
        return name

    def pre_hook(self, module: torch.nn.Module, fn: Callable[[Any, tuple, dict], None]) -> None:
        """`fn(module, args, kwargs)` before `module` runs."""
        self.registry.add_forward_pre_hook(self._name(), module, self._timed(fn), with_kwargs=True)

    def post_hook(self, module: torch.nn.Module, fn: Callable[[Any, tuple, Any], None]) -> None:
        """`fn(module, args, output)` after `module` runs."""
        self.registry.add_forward_hook(self._name(), module, self._timed(fn))

    def close(self) -> None:
        for name in self._names:
            if name in self.registry:
                self.registry.remove(name)
        self._names = []


def first_arg(args: tuple, kwargs: dict, name: str) -> Optional[torch.Tensor]:
    """The hooked module's first input, whether passed positionally or as `name=`."""
    if args:
        return args[0]
    return kwargs.get(name)


__all__ = ["HookRegistry", "HookEntry", "MethodPatch", "TransientHooks", "first_arg", "MISSING"]
