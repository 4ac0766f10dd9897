"""A worker's live state: the current snapshot reference and the counters.

Requests read ``runtime.snapshot`` once, at their start, and use only that object; a
reload builds a new Snapshot off to the side and rebinds the attribute (one store, atomic
under the GIL), so no request ever sees half of one config and half of another.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from gateway.config import LoadedConfig
from gateway.counters import Counters
from gateway.logs import RefusalLog
from gateway.policy import Decision, Snapshot, compile_config
from gateway.topk import BlockedHosts
from gateway.wire import printable

RELOADS = "gateway_config_reloads_total"
REFUSED_CONN = "gateway_connections_refused_total"


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
        self.refusal_log = RefusalLog()
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

    def note_blocked(
        self, host_values: Sequence[str], decision: Decision
    ) -> tuple[str | None, str]:
        """A refused (or, in report mode, would-be-refused) request's Host in the top
        blocked hosts, for both engines; returns (the Host as logged: printable, None when
        there was not exactly one; the reason as logged)."""
        host = host_values[0] if len(host_values) == 1 else None
        if host is not None and not host.isascii():
            host = printable(host)
        reason = "would_block" if decision.would_block else decision.label
        if host is not None:
            self.blocked.add(decision.environment, host, reason, time.time())
        return host, reason

    def refused_connection(self, listener: str, reason: str) -> None:
        self.counters.values[self.counters.slot(REFUSED_CONN, (listener, reason))] += 1

    @property
    def ready(self) -> bool:
        return self.listeners_up and not self.draining
