"""Reusable buffers for the engine's large temporaries on the CPU (docs/algorithm.md §12).

A fresh CPU tensor larger than glibc's mmap threshold (at most 32 MiB) is mapped when it is allocated and unmapped
when it is freed, so every call pays one page fault per 4 KiB page it touches again; smaller ones come back from the
heap only while glibc has not trimmed it. At 96 frames x 196 tokens x 3,584 dims one call touched about 1.2 GiB of
fresh pages, a sixth of its time. Decision data (normalised and rotated features, distance operands, screening
copies) is therefore written into named buffers that are allocated once and handed out as views.

Rules that keep this safe:

* a name is one live temporary: a view taken under a name is dead once the same name is taken again;
* views never leave the engine (plans and anything returned to a caller are fresh tensors) and never hold values
  that autograd records (only the detached decision path uses scratch);
* buffers are per thread and per call: `session()` keeps them for the next call of the same thread up to
  `keep_limit()` bytes in all (default 1 GiB) and frees them beyond it; `release()` frees them now;
* only the CPU uses them: CUDA's caching allocator already reuses memory, so there `take` is `torch.empty`.

The first rule is checked, not only stated: under `poisoned()` (or with ``TANGO_SCRATCH_POISON=1`` in the
environment) every `take` hands out a fresh buffer filled with 0xFF bytes and fills the name's previous buffer the
same way. A view still used after its name was taken again, or read before it was written, then holds NaN (float)
or -1 (integer) values, and the plan changes or an index error is raised: the tests run the engine this way and
compare its plans with a normal run (tests/test_clustering.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Dict, Iterator, Sequence

import torch

_KEEP_LIMIT = [1 << 30]


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.by_name: Dict[str, torch.Tensor] = {}
        self.depth = 0
        self.poison = os.environ.get("TANGO_SCRATCH_POISON", "") not in ("", "0")


_LOCAL = _Buffers()


def take(name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised (shape) tensor of `dtype`: on the CPU a view of the buffer `name` (grown when too small),
    elsewhere a fresh tensor."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    buf = _LOCAL.by_name.get(name)
    if _LOCAL.poison:
        if buf is not None:
            buf.fill_(0xFF)  # the previous view of this name is dead: make any later use of it visible
        buf = torch.full((max(nbytes, 64),), 0xFF, dtype=torch.uint8)
        _LOCAL.by_name[name] = buf
    elif buf is None or buf.numel() < nbytes:
        _LOCAL.by_name.pop(name, None)  # free the old one first: the peak is the new size, not both
        buf = torch.empty(max(nbytes, 64), dtype=torch.uint8)
        _LOCAL.by_name[name] = buf
    return buf[:nbytes].view(dtype).view(tuple(shape))


def float32_copy(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x.float()``: the same values and strides (what its preserve_format copy gives), written into the buffer
    `name` when x is decision data (a fresh tensor of a tower's q or k, or of a pool's features, is several MiB, and
    on the CPU every 4 KiB page of it costs a fault on first touch: 2.4 ms of OV's 32 x 729 tokens). Later
    operations see the same tensor either way, so they give the same bits. A tensor autograd records is copied
    as usual."""
    if x.dtype == torch.float32 or (x.requires_grad and torch.is_grad_enabled()):
        return x.float()
    order = sorted(range(x.dim()), key=lambda i: (-x.stride(i), i))  # x's dims from outermost to innermost
    if not x.permute(order).is_contiguous():
        return x.float()
    buf = take(name, [x.shape[i] for i in order], torch.float32, x.device)
    out = buf.permute(sorted(range(x.dim()), key=order.__getitem__))
    return out.copy_(x) if out.stride() == x.stride() else x.float()


@contextlib.contextmanager
def poisoned() -> Iterator[None]:
    """Inside the block this thread's `take` poisons (see the module docstring): a debug mode for tests."""
    outer = _LOCAL.poison
    _LOCAL.poison = True
    try:
        yield
    finally:
        _LOCAL.poison = outer


@contextlib.contextmanager
def session() -> Iterator[None]:
    """One engine call: on leaving the outermost session the buffers beyond `keep_limit()` are freed."""
    _LOCAL.depth += 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1
        if _LOCAL.depth == 0 and held_bytes() > _KEEP_LIMIT[0]:
            release()


def held_bytes() -> int:
    """Bytes of scratch this thread holds now."""
    return sum(b.numel() for b in _LOCAL.by_name.values())


def release() -> None:
    """Free this thread's buffers now (the next call allocates them again)."""
    _LOCAL.by_name.clear()


def keep_limit() -> int:
    return _KEEP_LIMIT[0]


def set_keep_limit(nbytes: int) -> None:
    """Bytes of scratch a thread keeps between calls (0: none, every call allocates its buffers afresh)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"scratch keep limit nbytes={nbytes!r}: expected an int >= 0")
    _KEEP_LIMIT[0] = nbytes
    if held_bytes() > nbytes:
        release()
