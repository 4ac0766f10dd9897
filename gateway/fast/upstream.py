"""Keep-alive upstream connections: the protocol that carries one request at a time, and
the per-worker pool that keeps idle ones for reuse.

What nginx's ``upstream { keepalive N; }`` does: a connection that finished a response
cleanly (complete body, no ``Connection: close``, the whole request sent) goes back to a
bounded idle list of its upstream; the next request to that upstream takes the most
recently used one (LIFO keeps the hot ones hot and lets the cold ones age out, closed by
a reaper after ``IDLE_TIMEOUT_S``, aiohttp's ``TCPConnector`` keepalive_timeout). Bytes
arriving on an idle connection, or any doubt about where a response ends, close it: a
connection is never reused with a response left over on it (response-queue poisoning).

Round robin over an environment's upstreams and skipping refusing ones for a while is
``gateway.proxy.UpstreamPool``, shared with the aiohttp engine, as are the upstream
metrics (``UpstreamStats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
from aiohttp.helpers import DEBUG

from gateway.config import Upstream
from gateway.counters import LATENCY_BUCKETS, Counters
from gateway.policy import EnvPolicy
from gateway.proxy import UpstreamPool, UpstreamStats

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from .protocol import Forward

# The fast engine's one clock, for its deadlines, idle times, latencies and upstream down
# times: a C call, where loop.time() is a method lookup and call (about 200 instructions,
# several a proxied request).
CLOCK: Final = time.monotonic
# (a Final static: the module's global otherwise, a dict lookup per use when compiled)
LATENCY_BUCKETS_F: Final = LATENCY_BUCKETS
# Idle connections kept per upstream. nginx's bench config keeps 64; a gateway worker
# may front several busy environments, so a little more, still bounded.
MAX_IDLE: Final = 256
# How long an idle upstream connection is kept (aiohttp TCPConnector keepalive_timeout).
IDLE_TIMEOUT_S: Final = 30.0
REAP_EVERY_S: Final = 5.0
# aiohttp's default read buffer for request bodies; only the StreamReader high-water
# mark, which never matters here because payloads are drained after every feed.
READ_LIMIT: Final = 2**16
# aiohttp's response parser limits (its defaults, which its client uses): a status line or
# a field (name + value) longer than MAX_FIELD, or more than MAX_HEADERS fields, is an
# invalid response. httptools joins a field's pieces without a limit, so the bytes of a
# response that are not body (heads, chunk framing, trailers) are capped as well, at
# MAX_HEAD plus 64 bytes a chunk (protocol.Forward.upstream_data): a memory bound.
MAX_FIELD: Final = 8190
MAX_HEADERS: Final = 128
MAX_HEAD: Final = MAX_HEADERS * (MAX_FIELD + 4) + MAX_FIELD + 4


class ParserSink:
    """What aiohttp's request parser needs from a protocol. Its payload ``StreamReader`` calls
    ``pause_reading``/``resume_reading`` when its buffer crosses a mark; the engine drains
    every payload right after each ``feed_data``, so those calls carry nothing, and flow
    control is done on the transports themselves (as uvicorn's ``FlowControl`` does)."""

    __slots__ = ()
    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


SINK: Any = ParserSink()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "body",
        "chunks",
        "closed",
        "code",
        "complete",
        "fed",
        "finals",
        "head_only",
        "headers",
        "heads",
        "idle",
        "idle_since",
        "keep",
        "loop",
        "parser",
        "pools",
        "reason",
        "transport",
        "unsolicited",
        "upstream",
        "user",
        "write_paused",
    )

    def __init__(
        self, pools: UpstreamPools, upstream: Upstream, idle: list[UpstreamConnection]
    ) -> None:
        self.pools = pools
        self.upstream = upstream
        self.idle = idle  # the idle list of its upstream, where it goes back when done
        self.loop = pools.loop
        self.transport: asyncio.Transport | None = None
        # The request being served on it. Typed as the class (not a Protocol) so the
        # compiled build calls its methods directly rather than by name.
        self.user: Forward | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.closed = False
        self.unsolicited = False
        self.write_paused = False
        self.idle_since = 0.0
        # What the parser reported of the response to the request in progress (see
        # ``expect``): the heads completed in the last feed (interim ones included), the
        # body bytes not relayed yet, whether the final response ended and may be followed
        # by another request.
        self.heads: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self.body: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.code = 0
        self.finals = 0
        self.complete = False
        self.keep = False
        self.head_only = False
        # Bytes fed for this response, and chunk headers seen (protocol.Forward bounds
        # the bytes that are not body: trailers, chunk framing, a second head).
        self.fed = 0
        self.chunks = 0

    # -- the response parser (httptools: llhttp with callbacks) -----------------------------
    #
    # aiohttp's HttpResponseParser builds a RawResponseMessage, a CIMultiDict and a
    # StreamReader per response and hands the body over through the StreamReader; here the
    # same llhttp (9.4, as vendored by aiohttp 3.14) reports to these callbacks, which only
    # record, so one feed may hold an interim response, the final one and bytes after it,
    # and protocol.Forward decides on all of it once the feed returns. aiohttp's leniencies
    # for responses are set the same way (``new_parser``), and its own checks on top of
    # llhttp are made by protocol.Forward (``response_fields``).

    def new_parser(self) -> None:
        parser = httptools.HttpResponseParser(self)
        if not DEBUG:
            # aiohttp.http_parser.HttpResponseParser outside dev mode: real servers send
            # these, and refusing them would make the engines answer differently.
            parser.set_dangerous_leniencies(
                lenient_headers=True,
                lenient_optional_cr_before_lf=True,
                lenient_spaces_after_chunk_size=True,
            )
        self.parser = parser

    def expect(self, head_only: bool) -> None:
        """Ready for the response to a new request (``head_only``: to a HEAD request)."""
        if self.parser is None or self.head_only:
            self.new_parser()  # after a HEAD response, the old one may wait for a body
        self.head_only = head_only
        self.code = 0
        self.finals = 0
        self.complete = False
        self.keep = False
        self.fed = 0
        self.chunks = 0
        self.heads.clear()
        self.body.clear()
        if self.headers:
            self.headers = []  # what a failed response left
        self.reason = b""

    def on_message_begin(self) -> None:
        if self.complete:
            # A message after the response to the request: even one not complete yet
            # (a head cut at the end of the read) must keep the connection out of the pool,
            # or its rest would be read as the next request's response.
            self.unsolicited = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the final head this is a trailer field: not relayed (neither engine
        # forwards trailers); protocol.Forward drops them at each read.
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        code = self.code = parser.get_status_code()
        self.heads.append((code, self.reason, self.headers))
        # Fresh for the next message (here rather than in an on_message_begin callback:
        # one Python call less per response).
        self.headers = []
        self.reason = b""
        if code >= 200:
            self.finals += 1
            if self.head_only and code != 101:
                # llhttp cannot be told that a HEAD response has no body (aiohttp's
                # parser can): the response ends here; this parser may now wait for a
                # body that never comes, so the next request gets a new one, and any byte
                # it reads meanwhile is one the upstream should not have sent.
                self.complete = True
                self.keep = parser.should_keep_alive()

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.complete:
            self.unsolicited = True  # a chunked body after a HEAD response's head

    def on_body(self, data: bytes) -> None:
        if self.complete:
            self.unsolicited = True
        else:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.code < 200 or self.head_only:
            return  # interim (1xx): the final response is still to come
        if self.complete:
            self.unsolicited = True
            return
        self.complete = True
        parser = self.parser
        self.keep = parser is not None and parser.should_keep_alive()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        user = self.user
        if user is None:
            # Bytes nobody asked for: whatever they are, they must never be read as the
            # response to the next request sent on this connection.
            self.unsolicited = True
            self.abort()
            return
        try:
            user.upstream_data(data)
        except Exception:
            client = getattr(user, "client", None)
            if client is not None:
                client.internal_error()
            else:
                raise

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        user = self.user
        if user is not None:
            user.upstream_lost()
        else:
            self.pools.forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.user is not None:
            self.user.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.user is not None:
            self.user.upstream_resume_writing()

    # -- helpers ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close after what is buffered has been written."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Route:
    """An environment's way to its upstreams, cached per EnvPolicy object so a request
    does no hashing of Upstream dataclasses: the round-robin state and, per upstream (in
    the same order), its list of idle connections; and its upstream-response counters."""

    __slots__ = (
        "code_slots", "counts", "env", "histogram", "idle", "pool", "single", "status_code",
        "status_line", "status_reason", "sums", "values",
    )  # fmt: skip

    def __init__(
        self,
        env: EnvPolicy,
        pool: UpstreamPool,
        idle: list[list[UpstreamConnection]],
        stats: UpstreamStats,
        values: list[int],
    ) -> None:
        self.env = env
        self.pool = pool
        self.idle = idle
        self.single = len(idle) == 1
        # gateway_upstream_responses_total slots for 1xx..5xx, and the latency histogram;
        # a response is counted as values[code_slots[klass]] += 1 (Counters.values).
        self.code_slots, self.histogram = stats.response_slots(env.name)
        # The histogram's own lists (never replaced): observed here, compiled, rather than
        # by an interpreted call and two attribute writes per response.
        self.counts = self.histogram.counts
        self.sums = self.histogram.sums
        self.values = values
        # The last relayed status line (Forward._response_head).
        self.status_code = 0
        self.status_reason = b""
        self.status_line = b""

    def observe(self, seconds: float) -> None:
        """``Histogram.observe``: the first bucket at or above ``seconds`` (bisect_left)."""
        i = 0
        for bound in LATENCY_BUCKETS_F:
            if bound >= seconds:
                break
            i += 1
        self.counts[i] += 1
        self.sums[0] += seconds


# UpstreamPool.order() for one upstream, whatever its down state ("all marked down: try
# them anyway"); shared, never mutated.
ONLY_FIRST: Final = (0,)


class UpstreamPools:
    """One per worker: round robin per set of upstreams, idle connections per upstream,
    and the upstream metrics (``.stats``, read by ``gateway.app.local_stats``)."""

    def __init__(self, counters: Counters) -> None:
        self.stats = UpstreamStats(counters)
        self._values = counters.values
        self._rr: dict[tuple[Upstream, ...], UpstreamPool] = {}
        self._idle: dict[Upstream, list[UpstreamConnection]] = {}
        # EnvPolicy id -> Route; read on the hot path (protocol.Forward.start), filled by
        # route().
        self.routes: dict[int, Route] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self.closing = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "UpstreamPools.start() first"
        return self._loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reaper = loop.call_later(REAP_EVERY_S, self._reap)

    def pool(self, env: EnvPolicy) -> UpstreamPool:
        pool = self._rr.get(env.upstreams)
        if pool is None:
            # Keyed by the upstream tuple, like proxy.Forwarder.pool: a reload that keeps
            # an environment's upstreams keeps its round-robin and down state.
            pool = self._rr[env.upstreams] = UpstreamPool(env.upstreams)
        return pool

    def route(self, env: EnvPolicy) -> Route:
        route = self.routes.get(id(env))
        if route is None or route.env is not env:
            if len(self.routes) >= 1024:
                self.routes.clear()  # old snapshots' environments: rebuilt on use
            idle = [self._idle.setdefault(up, []) for up in env.upstreams]
            route = self.routes[id(env)] = Route(
                env, self.pool(env), idle, self.stats, self._values
            )
        return route

    # -- idle connections -------------------------------------------------------------------

    @staticmethod
    def checkout(idle: list[UpstreamConnection]) -> UpstreamConnection | None:
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                return conn
        return None

    def checkin(self, conn: UpstreamConnection) -> None:
        idle = conn.idle
        transport = conn.transport
        if (
            self.closing
            or conn.closed
            or transport is None
            or transport.is_closing()
            or len(idle) >= MAX_IDLE
        ):
            conn.close()
            return
        conn.idle_since = CLOCK()
        idle.append(conn)

    @staticmethod
    def forget(conn: UpstreamConnection) -> None:
        """An idle connection was closed (by the upstream, or by us)."""
        if conn in conn.idle:
            conn.idle.remove(conn)

    def _reap(self) -> None:
        now = CLOCK()
        for idle in self._idle.values():
            # LIFO: the oldest are at the front.
            while idle and now - idle[0].idle_since > IDLE_TIMEOUT_S:
                idle.pop(0).close()
        if not self.closing:
            self._reaper = self.loop.call_later(REAP_EVERY_S, self._reap)

    # -- new connections --------------------------------------------------------------------

    def connect(
        self, route: Route, i: int, timeout: float
    ) -> Coroutine[Any, Any, UpstreamConnection]:
        return self._connect(route.env.upstreams[i], route.idle[i], timeout)

    async def _connect(
        self, upstream: Upstream, idle: list[UpstreamConnection], timeout: float
    ) -> UpstreamConnection:
        loop = self.loop
        conn = UpstreamConnection(self, upstream, idle)
        ctx: ssl.SSLContext | None = None
        if upstream.scheme == "https":
            if self._ssl is None:
                # Verified like aiohttp's ClientSession does by default.
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: conn,
                upstream.host,
                upstream.port,
                ssl=ctx,
                server_hostname=upstream.host if ctx is not None else None,
            )
        return conn

    def close(self) -> None:
        self.closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for idle in self._idle.values():
            for conn in idle:
                with contextlib.suppress(Exception):
                    conn.close()
            idle.clear()
