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
have not used torch yet; the caller's count is restored when the outermost call returns.

Policies (`set_policy`): "auto" (default) narrows only when the rest of the machine was busy since the previous
call: it compares the CPU time the whole machine spent (Linux `/proc/stat`) with this process's own
(`time.process_time`) over the interval since the previous sample, and when the other processes used at most the
cores this call leaves free plus a quarter of a core, the call keeps the caller's threads for every operation (on an
idle machine that is faster: 96 AR(1) frames, 2 threads, 0.45 s against 0.64 s narrowed). The first sample is
taken when the engine is imported, so a process's first call measures the time since (model loading, decoding).
An interval under 50 ms reuses the last measurement; a system without `/proc/stat` always narrows.
"size": always narrow. "caller": never narrow (every operation on the caller's threads).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Iterator, Optional, Tuple

import torch

# An operation gets the caller's threads from this much work on: multiply-adds of a product, or elements of an
# element-wise pass (a few milliseconds on one thread: long against a lost scheduler time slice).
WIDE_MIN_MACS = 1 << 30
WIDE_MIN_ELEMENTS = 1 << 22
_POLICY = ["auto"]
_POLICIES = ("auto", "size", "caller")
#: the other processes may use this much of a core beyond what a call leaves free before calls narrow
BUSY_MARGIN = 0.25
#: shortest interval between two samples that measures anything (/proc/stat counts in 10 ms ticks)
MIN_INTERVAL = 0.05


class _State(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.caller = 1
        self.narrowed = False  # whether the current call runs narrowed (then `wide` widens large operations)


_LOCAL = _State()


class _MachineLoad:
    """How many cores the other processes kept busy between two engine calls (None: not measured)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Optional[Tuple[float, float, float]] = None  # (machine busy s, own cpu s, wall s)
        self.others: Optional[float] = None
        try:
            self._tick = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self._tick = 100.0

    def _machine_busy(self) -> Optional[float]:
        try:
            with open("/proc/stat", "rb") as fh:
                fields = fh.readline().split()
        except OSError:
            return None
        if len(fields) < 8 or fields[0] != b"cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
        steal = int(fields[8]) if len(fields) > 8 else 0
        return (user + nice + system + irq + softirq + steal) / self._tick

    def sample(self) -> Optional[float]:
        """Take a sample; returns the other processes' cores since the previous one when the interval measures
        anything, else the last such value (None before the first)."""
        busy = self._machine_busy()
        if busy is None:
            return None
        now, own = time.monotonic(), time.process_time()
        with self._lock:
            if self._last is not None and now - self._last[2] >= MIN_INTERVAL:
                last_busy, last_own, last_now = self._last
                self.others = max(0.0, (busy - last_busy) - (own - last_own)) / (now - last_now)
            if self._last is None or now - self._last[2] >= MIN_INTERVAL:
                self._last = (busy, own, now)
            return self.others


_LOAD = _MachineLoad()
_LOAD.sample()  # the first call measures the interval since import (model loading, decoding) instead of narrowing


def _cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_for_caller(others: Optional[float], caller: int, cpus: int) -> bool:
    """Whether a call may keep `caller` threads for every operation: the other processes' measured cores fit in
    what the call leaves free (with `BUSY_MARGIN` to spare). Unmeasured (None): no."""
    return others is not None and others <= max(0, cpus - caller) + BUSY_MARGIN


def set_policy(policy: str) -> None:
    """"auto" (default): narrow only when the rest of the machine was busy since the previous call; "size": one
    thread for small operations, the caller's for large ones, always; "caller": the caller's thread count for
    everything."""
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
    """One engine call: the calling thread runs one intra-op thread until the outermost call returns, then its own
    count again (policy "size"; "auto" only when the machine was busy since the previous call)."""
    if _LOCAL.depth == 0:
        _LOCAL.caller = torch.get_num_threads()
    _LOCAL.depth += 1
    narrowed = _LOCAL.depth == 1 and _POLICY[0] != "caller" and _LOCAL.caller > 1
    if narrowed and _POLICY[0] == "auto":
        narrowed = not free_for_caller(_LOAD.sample(), _LOCAL.caller, _cpus())
    if _LOCAL.depth == 1:  # a nested call keeps the outermost call's choice
        _LOCAL.narrowed = narrowed
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
    if _LOCAL.depth == 0 or not _LOCAL.narrowed:
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
