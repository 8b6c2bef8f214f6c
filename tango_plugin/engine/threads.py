"""Thread counts chosen for the work's size (docs/algorithm.md §13).

An engine call is thousands of tensor operations, most of them small (gathers, norms, per-set products, sorts).
With N > 1 intra-op threads each one that is large enough for torch to split opens an OpenMP parallel region and
ends at a barrier. On an idle machine that costs microseconds; when another process keeps a core busy, a region
waits at its barrier until the operating system runs the preempted thread again (a scheduler time slice,
milliseconds), and the waiting thread spins on the core the caller needs. Thousands of regions then cost seconds:
on 2 cores with one core busy a 2-thread call was several times slower than a 1-thread call.

So a call runs its operations on one thread (`call_threads`) and gives the caller's thread count back only to
operations large enough to amortise a lost time slice (`wide`): the screening tile products, and element-wise
passes over tens of millions of values. Few large regions instead of thousands of small ones; on an idle machine
the products, where the threads pay off, still use every thread.

Thread counts never change results here: torch's reductions split over output rows and its (MKL / oneDNN) matrix
products over output blocks, so each element is summed in the same order whatever the count (checked on this
engine's shapes by `tests/test_engine_speed_conditions.py`; the canonical kernel's self-test is run per thread
count, docs/algorithm.md §11.1).

`torch.set_num_threads` sets the calling thread's OpenMP and MKL counts and torch's default for threads that
have not used torch yet; the caller's count is restored when the outermost call returns. `set_policy("caller")`
turns the narrowing off (every operation on the caller's threads, as before).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

# An operation gets the caller's threads from this much work on: multiply-adds of a product, or elements of an
# element-wise pass (a few milliseconds on one thread: long against a lost scheduler time slice).
WIDE_MIN_MACS = 1 << 30
WIDE_MIN_ELEMENTS = 1 << 22
_POLICY = ["size"]
_POLICIES = ("size", "caller")


class _State(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.caller = 1


_LOCAL = _State()


def set_policy(policy: str) -> None:
    """"size" (default): one thread for small operations, the caller's for large ones; "caller": the caller's
    thread count for everything."""
    if policy not in _POLICIES:
        raise ValueError(f"thread policy {policy!r}: expected one of {_POLICIES}")
    _POLICY[0] = policy


def policy() -> str:
    return _POLICY[0]


def threads_for(work: int, caller: int, min_work: int) -> int:
    """Threads for an operation of `work` units when the caller runs `caller` threads: all of them from
    `min_work` on, else one."""
    return caller if caller > 1 and work >= min_work else 1


@contextlib.contextmanager
def call_threads() -> Iterator[None]:
    """One engine call: the calling thread runs one intra-op thread (policy "size") until the outermost call
    returns, then its own count again."""
    if _LOCAL.depth == 0:
        _LOCAL.caller = torch.get_num_threads()
    _LOCAL.depth += 1
    narrowed = _LOCAL.depth == 1 and _POLICY[0] == "size" and _LOCAL.caller > 1
    if narrowed:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        _LOCAL.depth -= 1
        if narrowed:
            torch.set_num_threads(_LOCAL.caller)


@contextlib.contextmanager
def wide(work: int, min_work: int = WIDE_MIN_MACS) -> Iterator[None]:
    """Inside a call: the caller's threads for one operation of `work` units (see `threads_for`)."""
    if _LOCAL.depth == 0 or _POLICY[0] != "size":
        yield
        return
    n = threads_for(work, _LOCAL.caller, min_work)
    if n == 1:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def caller_threads() -> int:
    """The thread count the current call's caller runs (outside a call: torch's current count)."""
    return _LOCAL.caller if _LOCAL.depth else torch.get_num_threads()
