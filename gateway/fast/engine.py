"""``FastEngine``: the fast engine behind the interface ``gateway.app`` drives (the same as
``server.AiohttpEngine``: ``start`` / ``addresses`` / ``close_listeners`` / ``shutdown``,
``forwarder.stats`` for the upstream histograms)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from gateway.accesslog import AccessLog
from gateway.config import Bind
from gateway.runtime import Runtime
from gateway.wire import open_listener

from .prebuilt import DateLine, RequestIds
from .protocol import ClientConnection, Listener
from .upstream import CLOCK, UpstreamPools

# How often the forwards waiting on an upstream are checked for their timeouts: a read
# timeout fires between read_s and read_s + TICK_S (nginx's timer resolution is 1 ms, but
# nothing here needs better than a quarter second).
TICK_S = 0.25
# Header deadlines and keep-alive timeouts are checked every CONNECTION_TICKS ticks (1 s).
CONNECTION_TICKS = 4


class FastEngine:
    name = "fast"

    def __init__(self, runtime: Runtime, access_log: AccessLog | None = None) -> None:
        self.runtime = runtime
        self.access_log = access_log
        # Named like AiohttpEngine's Forwarder: app.local_stats reads .forwarder.stats.
        self.forwarder = UpstreamPools(runtime.counters)
        self._listeners: dict[str, Listener] = {}
        self._listening: list[asyncio.AbstractServer] = []
        self._date = DateLine()
        self._ids = RequestIds()
        self._ticker: asyncio.TimerHandle | None = None
        self._ticks = 0
        self.addresses: dict[str, tuple[str, int]] = {}

    async def start(
        self,
        binds: dict[str, Bind],
        ssl_contexts: dict[str, ssl.SSLContext] | None = None,
        sockets: dict[str, socket.socket] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.forwarder.start(loop)
        self._date.start(loop)
        self._ticker = loop.call_later(TICK_S, self._tick, loop)
        for name, bind in binds.items():
            listener = Listener(
                name, self.runtime, self.forwarder, self.access_log, self._ids, self._date, loop
            )
            self._listeners[name] = listener

            def factory(listener: Listener = listener) -> ClientConnection:
                return ClientConnection(listener)

            srv, self.addresses[name] = await open_listener(
                factory,
                bind,
                (ssl_contexts or {}).get(name),
                (sockets or {}).get(name),
                name,
                self.runtime,
            )
            self._listening.append(srv)
        self.runtime.listeners_up = True

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = CLOCK()  # the clock of the connections' deadlines
        self._ticks += 1
        keepalive_s = self.runtime.snapshot.config.timeouts.keepalive_s
        for listener in self._listeners.values():
            if listener.active:
                for fwd in list(listener.active):
                    fwd.check_timeout(now)
            if self._ticks % CONNECTION_TICKS == 0:
                # Every open connection, once a second: ~0.2 µs each, 2 ms a second for
                # 10,000 connections, against a timer handle each otherwise.
                for conn in list(listener.connections):
                    conn.check_timeouts(now, keepalive_s)
        self._ticker = loop.call_later(TICK_S, self._tick, loop)

    async def close_listeners(self) -> None:
        # Closing the listening sockets refuses new connections at once; the connections
        # already accepted keep going until shutdown().
        for srv in self._listening:
            srv.close()
        self._listening.clear()

    async def shutdown(self, timeout: float) -> None:
        """uvicorn's and hypercorn's order: idle keep-alive connections close now, busy
        ones after their response (``Connection: close``), within ``timeout``; then the
        rest are cut and the upstream connections closed."""
        loop = asyncio.get_running_loop()
        listeners = list(self._listeners.values())
        for listener in listeners:
            listener.draining = True
            for conn in list(listener.connections):
                conn.drain()
        deadline = loop.time() + timeout
        while any(lst.connections for lst in listeners) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for listener in listeners:
            for conn in list(listener.connections):
                conn._abort()
            for task in list(listener.tasks):
                task.cancel()
        await asyncio.sleep(0)  # let the aborted connections' connection_lost run
        self.forwarder.close()
        self._date.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        with contextlib.suppress(Exception):
            for listener in listeners:
                if listener.tasks:
                    await asyncio.gather(*listener.tasks, return_exceptions=True)
