"""Per-thread call state of an enabled model (docs/usage.md, "Threads").

One enabled model may be called from several threads at once. What a call needs to remember while it runs (how
deep inside its own call of the original method it is, the frame times it was given) lives per thread, through the
`per_thread` attribute below; hooks that live for one call act only for the thread that attached them
(`integration.hooks.TransientHooks`); the few stages whose state cannot be split per call (the intra-LLM stage,
LLaVA-NeXT's `llava` adapter) run one call at a time, in a lock (`serial`). Nothing here is stored in a form that
stops an enabled model from being deep-copied or pickled.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator

_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
#: guards the running totals of the reports (small read-modify-write updates)
REPORT_LOCK = threading.Lock()


class per_thread:
    """A class attribute whose value is per thread and per instance: each thread reads the default until it sets
    its own value; setting the default back frees the thread's slot. Stored in the instance's ``__dict__`` as plain
    data (a dict of thread id to values), so the instance still deep-copies and pickles."""

    def __init__(self, default: Any = None) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return obj.__dict__.get("_per_thread", {}).get(threading.get_ident(), {}).get(self.name, self.default)

    def __set__(self, obj, value) -> None:
        table = obj.__dict__.setdefault("_per_thread", {})
        tid = threading.get_ident()
        slot = table.setdefault(tid, {})
        if value is self.default or (type(value) is type(self.default) and isinstance(value, (int, float, str))
                                     and value == self.default):
            slot.pop(self.name, None)
            if not slot:
                table.pop(tid, None)
        else:
            slot[self.name] = value


@contextlib.contextmanager
def serial(obj: Any) -> Iterator[None]:
    """Run the block while no other thread runs a block `serial` on the same object (re-entrant)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(obj)
        if lock is None:
            lock = _LOCKS[obj] = threading.RLock()
    with lock:
        yield


__all__ = ["per_thread", "serial", "REPORT_LOCK"]
