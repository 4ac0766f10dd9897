"""A worker's live state: the current snapshot reference and the counters.

Requests read ``runtime.snapshot`` once, at their start, and use only that object; a
reload builds a new Snapshot off to the side and rebinds the attribute (one store, atomic
under the GIL), so no request ever sees half of one config and half of another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Final

from gateway.config import LoadedConfig
from gateway.counters import Counters
from gateway.logs import RefusalLog
from gateway.policy import Decision, Snapshot, compile_config
from gateway.topk import BlockedHosts
from gateway.wire import printable

RELOADS = "gateway_config_reloads_total"
REFUSED_CONN = "gateway_connections_refused_total"
# Refusals held before they are counted in the top blocked hosts (Runtime.note_blocked):
# counted per (decision, Host), at most this many pairs (each holds its Host value, up to
# 8 KB), for at most FOLD_S seconds.
FOLD_AT: Final = 512
FOLD_S: Final = 0.25


def refusal_reason(decision: Decision) -> str:
    """A refusal's reason as logged and counted ("would_block" in report mode)."""
    return "would_block" if decision.would_block else decision.label


def shown_host(host: str) -> str:
    """A Host value as logged and counted: printable (bytes that were not UTF-8 escaped)."""
    return host if host.isascii() else printable(host)


def logged_fields(host_values: Sequence[str], decision: Decision) -> tuple[str | None, str]:
    """A refusal's Host as logged (None when there was not exactly one) and its reason."""
    host = shown_host(host_values[0]) if len(host_values) == 1 else None
    return host, refusal_reason(decision)


class Runtime:
    def __init__(self, loaded: LoadedConfig, listen: str = "0.0.0.0:8080") -> None:
        self.counters = Counters()
        self.listen = listen
        self.snapshot: Snapshot = compile_config(loaded, self.counters, listen)
        self.reload_slots = {r: self.counters.slot(RELOADS, (r,)) for r in ("success", "failure")}
        self.last_reload_ok = True
        self.last_reload_success_ts = time.time()
        self.last_reload_error: str | None = None
        self.last_reload_stall_s = 0.0
        self.last_reload_duration_s = 0.0
        self.connections_open: dict[str, int] = dict.fromkeys(self.snapshot.listeners, 0)
        self.in_flight: dict[str, int] = dict.fromkeys(self.snapshot.listeners, 0)
        self.blocked = BlockedHosts()
        self.blocked_pending: Final[dict[tuple[Decision, str], int]] = {}
        self.refusal_log: Final = RefusalLog()
        self.listeners_up = False
        self.draining = False
        self.worker_id = os.getpid()
        self._swap_listeners: list[Callable[[Snapshot], None]] = []

    # -- reload -------------------------------------------------------------------------

    def on_swap(self, callback: Callable[[Snapshot], None]) -> None:
        self._swap_listeners.append(callback)

    def swap(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.last_reload_ok = True
        self.last_reload_error = None
        self.last_reload_success_ts = time.time()
        self.counters.values[self.reload_slots["success"]] += 1
        for cb in self._swap_listeners:
            cb(snapshot)

    def reload_failed(self, message: str) -> None:
        self.last_reload_ok = False
        self.last_reload_error = message
        self.counters.values[self.reload_slots["failure"]] += 1

    def admit(self, listener: str) -> bool:
        """Count a new connection, or refuse it (and count that) past the per-worker cap.
        Both engines call this, so the cap means the same thing in each."""
        open_now = self.connections_open.get(listener, 0)
        if open_now >= self.snapshot.config.limits.max_connections:
            self.refused_connection(listener, "connection_limit")
            return False
        self.connections_open[listener] = open_now + 1
        return True

    def release(self, listener: str) -> None:
        """Give back a slot taken by ``admit`` (for a connection an engine never got)."""
        self.connections_open[listener] -= 1

    def note_blocked(self, host_values: Sequence[str], decision: Decision) -> None:
        """A refused (or, in report mode, would-be-refused) request's Host, for the top
        blocked hosts, for both engines.

        Counted per (decision, Host) in a small map and folded into the table in batches
        (``fold_blocked``): a refusal then costs two dict operations, where the table's own
        update cost about a tenth of the fast engine's refused path (and holding a list of
        every refusal for a fold, as before, about 400 instructions more). The map is bounded
        (``FOLD_AT`` pairs; a flood of one Host is one pair) and folded at least every
        ``FOLD_S`` seconds and before every read of the table, so readers see every
        refusal, and ``first_seen``/``last_seen`` are exact to ``FOLD_S``. A request with
        no Host or several is refused but names no host: not counted here."""
        if len(host_values) != 1:
            return
        pending = self.blocked_pending
        key = (decision, host_values[0])
        # pop and insert: a pair moves to the end at each refusal, so the pairs are folded
        # in the order of their last refusal, and a Host's slot ends with the reason it
        # was last refused for, as one add per refusal left it.
        pending[key] = pending.pop(key, 0) + 1
        if len(pending) >= FOLD_AT:
            self.fold_blocked()

    def fold_blocked(self) -> None:
        pending = self.blocked_pending
        if not pending:
            return
        # Emptied in place: the fast engine's listeners hold this map.
        counts = pending.copy()
        pending.clear()
        now = time.time()
        add = self.blocked.add
        for (decision, host), n in counts.items():
            add(decision.environment, shown_host(host), refusal_reason(decision), now, n)

    def blocked_snapshot(self) -> dict[str, list[dict[str, object]]]:
        self.fold_blocked()
        return self.blocked.snapshot()

    def clear_blocked(self, environment: str | None = None) -> None:
        self.fold_blocked()
        self.blocked.clear(environment)

    async def fold_blocked_forever(self) -> None:
        while True:
            await asyncio.sleep(FOLD_S)
            try:
                self.fold_blocked()
            except Exception:  # a bug here must not stop the folding for good
                logging.getLogger("gateway").exception("folding the top blocked hosts failed")

    def refused_connection(self, listener: str, reason: str) -> None:
        self.counters.values[self.counters.slot(REFUSED_CONN, (listener, reason))] += 1

    @property
    def ready(self) -> bool:
        return self.listeners_up and not self.draining
