"""The most frequent refused (and would-block) Host values, in bounded memory.

Space-Saving (Metwally, Agrawal, El Abbadi, 2005): ``k`` counters; a value not yet counted
takes the slot of the smallest count and inherits it as its possible overestimate
(``error``). Every value whose true count exceeds N/k is guaranteed to be in the table,
so the heavy hitters an operator needs to allow (or to worry about) are always there,
while a flood of random Host values can never grow memory past ``k`` slots.

The smallest slot is found with a heap of one entry per slot whose counts are only
brought up to date when they reach the top, so a repeated value (the usual refusal)
costs a dict lookup and no heap work, and a new value O(log k) amortised. Sans-IO: the
caller passes the time.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

MAX_VALUE_CHARS = 256  # raw values are stored up to this; longer ones are flagged


@dataclass(slots=True)
class Slot:
    value: str
    truncated: bool
    count: int
    error: int
    reason: str
    first_seen: float
    last_seen: float

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.value,
            "truncated": self.truncated,
            "count": self.count,
            "error": self.error,
            "reason": self.reason,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


class TopK:
    __slots__ = ("_heap", "k", "slots")

    def __init__(self, k: int = 100) -> None:
        self.k = k
        self.slots: dict[str, Slot] = {}
        self._heap: list[tuple[int, str]] = []

    def add(self, raw: str, reason: str, now: float, n: int = 1) -> None:
        """Count ``raw`` ``n`` times (a batch of refusals folded at once: see
        runtime.Runtime.note_blocked); Space-Saving takes weights as they are."""
        truncated = len(raw) > MAX_VALUE_CHARS
        key = raw[:MAX_VALUE_CHARS] if truncated else raw
        slot = self.slots.get(key)
        if slot is not None:
            # The usual case (the same refused Host again): no heap work at all; the
            # key's heap entry becomes a lower bound, corrected when it reaches the top.
            slot.count += n
            slot.last_seen = now
            slot.reason = reason
            if truncated:
                slot.truncated = True
            return
        if len(self.slots) < self.k:
            self.slots[key] = Slot(key, truncated, n, 0, reason, now, now)
            heapq.heappush(self._heap, (n, key))
            return
        victim = self._pop_min()
        floor = victim.count
        del self.slots[victim.value]
        self.slots[key] = Slot(key, truncated, floor + n, floor, reason, now, now)
        heapq.heappush(self._heap, (floor + n, key))

    def _pop_min(self) -> Slot:
        # One heap entry per slot, holding a count that may have grown since: the top is
        # the true minimum once its count is current (every other entry is a lower bound
        # of a count at least as large).
        heap, slots = self._heap, self.slots
        while True:
            count, key = heap[0]
            slot = slots[key]
            if slot.count == count:
                heapq.heappop(heap)
                return slot
            heapq.heapreplace(heap, (slot.count, key))

    def top(self, n: int | None = None) -> list[Slot]:
        ranked = sorted(self.slots.values(), key=lambda s: (-s.count, s.value))
        return ranked if n is None else ranked[:n]

    def clear(self) -> None:
        self.slots.clear()
        self._heap.clear()


class BlockedHosts:
    """One TopK per environment ("" for refusals no environment claims)."""

    __slots__ = ("k", "per_env")

    def __init__(self, k: int = 100) -> None:
        self.k = k
        self.per_env: dict[str, TopK] = {}

    def add(self, environment: str, raw: str, reason: str, now: float, n: int = 1) -> None:
        tk = self.per_env.get(environment)
        if tk is None:
            # Environment names come from the config, never from the request: bounded.
            tk = self.per_env[environment] = TopK(self.k)
        tk.add(raw, reason, now, n)

    def snapshot(self) -> dict[str, list[dict[str, object]]]:
        return {env: [s.as_dict() for s in tk.top()] for env, tk in self.per_env.items()}

    def clear(self, environment: str | None = None) -> None:
        if environment is None:
            self.per_env.clear()
        else:
            self.per_env.pop(environment, None)


def slot_from_dict(row: dict[str, object]) -> Slot:
    return Slot(
        value=str(row["host"]),
        truncated=bool(row["truncated"]),
        count=int(str(row["count"])),
        error=int(str(row["error"])),
        reason=str(row["reason"]),
        first_seen=float(str(row["first_seen"])),
        last_seen=float(str(row["last_seen"])),
    )


def merge_snapshots(
    snapshots: list[dict[str, list[dict[str, object]]]], k: int = 100
) -> dict[str, list[dict[str, object]]]:
    """Combine several workers' tables: counts and errors add (still upper bounds)."""
    merged: dict[str, dict[str, Slot]] = {}
    for snap in snapshots:
        for env, rows in snap.items():
            table = merged.setdefault(env, {})
            for row in rows:
                slot = slot_from_dict(row)
                prev = table.get(slot.value)
                if prev is None:
                    table[slot.value] = slot
                    continue
                prev.count += slot.count
                prev.error += slot.error
                prev.first_seen = min(prev.first_seen, slot.first_seen)
                prev.last_seen = max(prev.last_seen, slot.last_seen)
                prev.truncated = prev.truncated or slot.truncated
    return {
        env: [s.as_dict() for s in sorted(rows.values(), key=lambda s: (-s.count, s.value))[:k]]
        for env, rows in merged.items()
    }
