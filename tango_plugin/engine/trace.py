"""What the engine did, for tests and debugging: the clustering route of every point set and the path of every
call, noted per thread while a `recorded()` block is open (nothing is kept otherwise).

Events: ``"route small"``, ``"route batched"``, ``"route per-set"``, ``"route screened"``, ``"route tiled"``
(engine/clustering.py), ``"path deferred"`` and ``"path per-segment"`` (engine/tango.py: the call ended on the
sync-free path, or on the path that reads pool sizes segment by segment), and from the screened route
(engine/dpc_screened.py) ``"screened tiles-retaken n/N"`` (tiles whose candidate lists overflowed, taken again
whole), ``"screened peaks-widened n"`` (peaks screened again with a wider window) and ``"screened listed n/M"``
(points assigned from their nearest lists, the rest screened against every anchor).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List

_LOCAL = threading.local()


@contextlib.contextmanager
def recorded() -> Iterator[List[str]]:
    """Collect the events this thread notes inside the block (a nested block collects its own)."""
    outer = getattr(_LOCAL, "events", None)
    _LOCAL.events = []
    try:
        yield _LOCAL.events
    finally:
        _LOCAL.events = outer


def note(event: str) -> None:
    events = getattr(_LOCAL, "events", None)
    if events is not None:
        events.append(event)


def routes(events: List[str]) -> List[str]:
    """The route names among `events`, in order."""
    return [e.split(" ", 1)[1] for e in events if e.startswith("route ")]
