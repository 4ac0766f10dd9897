"""Counting on the hot path: plain integers in a list, indexed by slots fixed at compile time.

``prometheus_client.Counter.inc()`` takes a lock (about 0.6 µs here) and ``labels()`` costs
a dict lookup and more on every call. Instead a compiled decision carries the index of its
counter and the request does ``values[slot] += 1``; a custom collector turns the list into
metric families at scrape time (the pattern of ``prometheus_client/gc_collector.py``).
Slots never move and are never reused, so a reload that builds new decisions keeps counting
into the same integers and counters never go backwards. Every label value comes from the
config or a fixed set, never from a request, so the number of slots is bounded.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

# Upstream latency buckets: 1 ms to 30 s (contract §5).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Counters:
    """Integer counters keyed by (family, label values). Not thread-safe by design: each
    worker process owns one and only its event loop thread writes to it."""

    __slots__ = ("_index", "_lock", "keys", "values")

    def __init__(self) -> None:
        self.values: list[int] = []
        self.keys: list[tuple[str, tuple[str, ...]]] = []
        self._index: dict[tuple[str, tuple[str, ...]], int] = {}
        # Slots are allocated by the reload thread and the loop (first use of an upstream
        # environment); the lock keeps one slot per key. Never taken per request.
        self._lock = threading.Lock()

    def slot(self, family: str, labels: tuple[str, ...]) -> int:
        key = (family, labels)
        idx = self._index.get(key)
        if idx is None:
            with self._lock:
                idx = self._index.get(key)
                if idx is None:
                    idx = len(self.values)
                    self.keys.append(key)
                    self.values.append(0)
                    self._index[key] = idx
        return idx

    def get(self, family: str, labels: tuple[str, ...]) -> int:
        idx = self._index.get((family, labels))
        return 0 if idx is None else self.values[idx]

    def items(self) -> Iterator[tuple[str, tuple[str, ...], int]]:
        for (family, labels), value in zip(self.keys, self.values, strict=False):
            yield family, labels, value


class Histogram:
    """A fixed-bucket histogram: cumulative counts are made at scrape time, so observing
    is one bisect and two additions."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        # The sum in a list of one: the compiled fast engine adds to it in place
        # (gateway/fast/upstream.py Route.observe), with no attribute write.
        self.sums = [0.0]

    @property
    def total(self) -> float:
        return self.sums[0]

    def observe(self, value: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sums[0] += value

    def cumulative(self) -> list[int]:
        out, acc = [], 0
        for c in self.counts:
            acc += c
            out.append(acc)
        return out
