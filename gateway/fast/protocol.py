"""The fast engine's client connection, and the forwarding of one allowed request.

One ``ClientConnection`` per accepted socket feeds what it reads to aiohttp's strict
request parser (llhttp), decides each request with the sans-IO core
(``ListenerPolicy``), and answers in request order:

- a refusal is one ``transport.write`` of prebuilt bytes (``prebuilt.Refusal``);
- an allowed request becomes a ``Forward``: the request head rebuilt by
  ``proxy.upstream_headers`` (the same header rules as the aiohttp engine), written to a
  pooled keep-alive upstream connection, the body streamed after it, the response parsed
  by llhttp (through httptools' callbacks, ``upstream.UpstreamConnection``: aiohttp's
  response parser builds three objects per response that cost more than the rest of
  the relay) and relayed, reframed as the aiohttp engine does.

Everything runs in transport callbacks; the only task is a connect to a new upstream
connection. Flow control is on the transports, both ways, as in uvicorn's
``httptools_impl`` (``FlowControl``) and nginx's unbuffered proxying: a full upstream
write buffer pauses reading from the client, a full client write buffer pauses reading
from the upstream, so a body never sits in memory beyond a read or two.

Ordering (pipelining, RFC 9112 §9.3.2): parsed requests wait in a queue while one is in
progress, and the client is not read meanwhile (uvicorn does the same); each is decided
on its own, against the snapshot current when its turn comes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any, Final, cast

from aiohttp import hdrs  # istr names: a multidict lookup without lowercasing the key
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD as _EMPTY_PAYLOAD
from httptools import HttpParserCallbackError, HttpParserUpgrade

from gateway import proxy_protocol
from gateway.accesslog import AccessLog
from gateway.policy import Decision, EnvPolicy, Snapshot
from gateway.proxy import DROP_RESPONSE, FORBIDDEN_IN_FIELD, client_address, connection_tokens
from gateway.runtime import FOLD_AT, Runtime, logged_fields
from gateway.wire import DISCARD_LIMIT, SNI_ATTR, origin_form, sni_matches

from . import prebuilt
from .bodyless import BodylessHead, BodylessParser
from .chunked import ChunkedFraming
from .headers import METHOD_SP, NUL, drop_listed, request_head
from .prebuilt import (
    CLOSE,
    KEEP_10,
    KEEP_11,
    DateLine,
    Refusal,
    RequestIds,
)
from .upstream import (
    CLOCK,
    MAX_FIELD,
    MAX_HEAD,
    MAX_HEADERS,
    ONLY_FIRST,
    SINK,
    Route,
    UpstreamConnection,
    UpstreamPools,
)
from .view import ListenerView, Outcome

log = logging.getLogger("gateway.fast")
# Module constants bound to Final names: the compiled build keeps them in C statics, where
# an imported name is a dict lookup in the module's globals at every use.
HOST: Final = hdrs.HOST
EMPTY_PAYLOAD: Final = _EMPTY_PAYLOAD
# aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1) is laxer than llhttp about chunked
# framing; with it, chunked bodies are checked by chunked.ChunkedFraming first.
PYTHON_PARSER: Final = HttpRequestParser.__module__ == "aiohttp.http_parser"
# This module as the compiled build runs it (gateway/fast/__init__.py: the build is the
# package gateway.fast_c, which holds no sources).
COMPILED: Final = __name__.startswith("gateway.fast_c.")

# Methods after which aiohttp's client sends no "Content-Length: 0" for an empty body.
GET_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# A stale keep-alive connection is retried once for these (aiohttp client.py, RFC 9110 §9.2.2).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DROP_RESPONSE_B: Final = frozenset(name.encode("ascii") for name in DROP_RESPONSE)
# Upstream response fields the relay does not copy as they are, by lowercased name, so a
# field costs one dict lookup: 1 dropped (hop-by-hop, Content-Length, which is re-added;
# X-Request-ID, which is the gateway's), 2 Date (copied; its absence is filled in), 3
# X-Gateway-Config (dropped when the gateway adds its own), 4 Content-Length, 5
# Transfer-Encoding (dropped; read to know whether the body ends at close), 6 a field
# aiohttp's parser refuses (the old WebSocket handshake's), 7 Connection (dropped; the
# fields it lists are dropped too, RFC 9110 §7.6.1).
_DROPPED: Final = 1
_DATE: Final = 2
_CONFIG: Final = 3
_LENGTH: Final = 4
_TE: Final = 5
_INVALID: Final = 6
_CONN: Final = 7
RESPONSE_SPECIAL: Final = dict.fromkeys(DROP_RESPONSE_B, _DROPPED) | {
    b"connection": _CONN,
    b"x-request-id": _DROPPED,
    b"date": _DATE,
    b"x-gateway-config": _CONFIG,
    b"content-length": _LENGTH,  # dropped, then written again as the framing says
    b"transfer-encoding": _TE,
    b"sec-websocket-key1": _INVALID,
}


def _title(name: bytes) -> bytes:
    return b"-".join(part.capitalize() for part in name.split(b"-"))


# Classifying a field without lowercasing its name first (a bytes object per field): the
# special names also under their usual spellings, and the usual plain names, as servers
# send them. Any other spelling is lowercased, then looked up.
RESPONSE_SPECIAL_SENT: Final = (
    RESPONSE_SPECIAL
    | {_title(name): kind for name, kind in RESPONSE_SPECIAL.items()}
    | {b"X-Request-ID": _DROPPED, b"TE": _DROPPED, b"Sec-WebSocket-Key1": _INVALID}
)
RESPONSE_PLAIN_SENT: Final = frozenset(
    {
        b"Server", b"Content-Type", b"Cache-Control", b"Content-Encoding", b"ETag",
        b"Last-Modified", b"Expires", b"Vary", b"Set-Cookie", b"Location", b"Accept-Ranges",
        b"Access-Control-Allow-Origin", b"Content-Language", b"Content-Disposition",
        b"Strict-Transport-Security", b"X-Content-Type-Options", b"X-Frame-Options",
        b"Age", b"Pragma", b"Link", b"Content-Security-Policy", b"Referrer-Policy",
    }
)  # fmt: skip
# Connection values that list no field (the usual ones, as servers send them).
CONNECTION_PLAIN: Final = frozenset(
    {b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"}
)
assert not {n.lower() for n in RESPONSE_PLAIN_SENT} & RESPONSE_SPECIAL.keys()
assert all(RESPONSE_SPECIAL[n.lower()] == k for n, k in RESPONSE_SPECIAL_SENT.items())
# Both in one table, the plain names as 0: the usual field costs one lookup.
_PLAIN: Final = 0
RESPONSE_SENT: Final[dict[bytes, int]] = RESPONSE_SPECIAL_SENT | dict.fromkeys(
    RESPONSE_PLAIN_SENT, _PLAIN
)


def _name_key(name: bytes) -> int:
    """A field name's length and first letter (in any case), folded into 0..1023."""
    return (len(name) & 31) << 5 | name[0] & 31


# Which keys a special name has: a field whose key is not among them is plain without a
# lookup (hashing a name the parser just made costs more than the lookup itself).
SPECIAL_KEYS: Final = bytes(
    1 if any(_name_key(n) == k for n in RESPONSE_SPECIAL) else 0 for k in range(1024)
)
# A refused (or early-answered) request's body is read and dropped for this long before
# the connection is closed: aiohttp's lingering_time, which the aiohttp engine sets to 2 s.
LINGER_S: Final = 2.0
# The empty queue every connection starts with (a shared, never-filled deque).
NO_QUEUE: Final[deque[Any]] = deque(maxlen=0)
# The client's read buffer while a request waits for its upstream connection.
HOLD_LIMIT: Final = 64 * 1024
# The request parser's body StreamReader limit (aiohttp's read_bufsize default).
READ_LIMIT: Final = 2**16
HEADER_SEP: Final = b"\r\n\r\n"

# Why the client transport is not being read; reading resumes when no reason is left.
P_PIPELINE: Final = 1  # requests are queued behind the one in progress
P_UPSTREAM: Final = 2  # the upstream's write buffer is full (request body back-pressure)
P_WAIT: Final = 4  # body or upgrade bytes held until the upstream connection exists / answers
P_DEAD: Final = 8  # the parser failed: nothing after the failure is read

# How the response body is framed to the client.
OUT_NONE: Final = 0
OUT_LENGTH: Final = 1
OUT_CHUNKED: Final = 2
OUT_EOF: Final = 3
HEAD_END: Final = b"\r\n\r\n"
# A response head's bytes with every control character but CR and LF (tab included)
# turned into NUL, and CR into LF: a scan for NUL and one for a space before LF then find
# a head that needs a field by field look.
HEAD_SCAN: Final = bytes(
    0x0A if b == 0x0D else 0 if (b < 0x20 and b != 0x0A) or b == 0x7F else b for b in range(256)
)


class BadResponse(Exception):
    """An upstream response aiohttp's parser would refuse."""


def response_fields(
    reason: bytes, headers: list[tuple[bytes, bytes]], relayed: bool = True
) -> list[tuple[bytes, bytes]]:
    """The checks aiohttp's response parser makes on top of llhttp's (limits, NUL) and its
    trailing whitespace stripping (llhttp strips only the leading one, RFC 9110 §5.5);
    and, for a head that is ``relayed`` (not an interim one, which is swallowed), the
    control characters aiohttp's writer refuses to send. Raises ``BadResponse``."""
    if len(reason) > MAX_FIELD:
        raise BadResponse("status line too long")
    if relayed and FORBIDDEN_IN_FIELD.search(reason.decode("latin-1")) is not None:
        raise BadResponse("control character in the reason phrase")
    if len(headers) > MAX_HEADERS:
        raise BadResponse("too many header fields")
    out = []
    for name, value in headers:
        if len(name) + len(value) > MAX_FIELD:
            raise BadResponse("header field too long")
        if NUL in value:
            raise BadResponse("NUL in a header field")
        value = value.rstrip(b" \t")
        if relayed and FORBIDDEN_IN_FIELD.search(value.decode("latin-1")) is not None:
            raise BadResponse("control character in a header field")
        out.append((name, value))
    return out


class ParseFailure:
    """A request the parser refused, answered 400 in its turn (after the responses the
    requests before it are owed)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def failure_reason(exc: BaseException | None) -> str:
    """As ``server.ListenerEngine.parser_refusal``: aiohttp's parser refuses the two Host
    errors itself; they keep their own reason so "allowed + blocked = received" holds per
    reason too."""
    text = str(getattr(exc, "message", "") or exc or "").lower()
    if text.startswith("duplicate 'host'"):
        return "duplicate_host"
    if text.startswith("missing 'host'"):
        return "missing_host"
    return "bad_request"


def content_length(msg: Any) -> int | None:
    value = msg.headers.get(hdrs.CONTENT_LENGTH)
    return int(value) if value is not None else None


class Listener:
    """What every connection of one listener shares: config-derived caches, the upstream
    pools, the request ids and the Date line, and the set of open connections."""

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        pools: UpstreamPools,
        access_log: AccessLog | None,
        ids: RequestIds,
        date: DateLine,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.pools = pools
        self.access_log = access_log
        self.ids = ids
        self.date = date
        self.loop = loop
        limits = runtime.snapshot.config.limits
        # Fixed at start, as the aiohttp engine fixes them for its web.Server.
        self.max_line = limits.max_header_bytes
        self.max_headers = limits.max_headers
        # The common request's parse (bodyless.py), shared by the listener's connections.
        # Compiled only: interpreted, its callbacks cost more than aiohttp's C parser saves
        # (43,654 instructions a refusal against 37,298, bench/RESULTS.md). Not beside
        # aiohttp's pure-Python parser, whose acceptance is its own.
        self.bodyless: BodylessParser | None = (
            BodylessParser(self.max_line, self.max_line, self.max_headers)
            if COMPILED and not PYTHON_PARSER
            else None
        )
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.tasks: set[asyncio.Task[Any]] = set()
        # Forwards waiting on an upstream, checked for their timeouts by the engine's
        # sweep (engine.TICK_S) instead of a timer each: uvloop's call_at and cancel cost
        # ~4 µs per request, a set add and discard ~0.1 µs.
        self.active: set[Forward] = set()
        # The policy as the request path reads it (view.ListenerView), remade when a
        # request first meets a new snapshot; and the runtime's lists that never change
        # identity, held here so a request reads them without a Python attribute lookup.
        self.view = ListenerView(runtime.snapshot, runtime.snapshot.listeners[name])
        self.counters: list[int] = runtime.counters.values
        self.in_flight: dict[str, int] = runtime.in_flight  # (one object for the runtime's life)
        self.blocked_pending: dict[tuple[Decision, str], int] = runtime.blocked_pending
        self.refusal_log = runtime.refusal_log

    def new_parser(self) -> Any:
        return HttpRequestParser(
            SINK,
            self.loop,
            READ_LIMIT,
            max_line_size=self.max_line,
            max_field_size=self.max_line,
            max_headers=self.max_headers,
            auto_decompress=False,
        )

    def view_of(self, snap: Snapshot) -> ListenerView:
        view = self.view
        if view.snap is not snap:
            view = self.view = ListenerView(snap, snap.listeners[self.name])
        return view

    def refusal(self, decision: Decision, snap: Snapshot) -> Refusal:
        """A refusal's bytes; prebuilt in this listener's view of the snapshot in use,
        made afresh for a request still decided by an older one."""
        view = self.view
        tpl = view.outcome(decision).refusal if view.snap is snap else None
        return tpl if tpl is not None else Refusal(decision, snap.short_sha)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def access(
        self,
        decision: Decision,
        status: int,
        rid: bytes,
        sha: str,
        client: str,
        method: str,
        upstream: str | None,
        duration: float,
    ) -> None:
        assert self.access_log is not None
        self.access_log.write(
            {
                "time": time.time(),
                "request_id": rid.decode("ascii"),
                "client": client,
                "listener": self.name,
                "environment": decision.environment,
                "decision": "allowed" if decision.action == "forward" else "blocked",
                "reason": decision.label,
                "status": status,
                "method": method,
                "upstream": upstream,
                "duration_s": round(duration, 6),
                "config": sha,
            }
        )


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "L",
        "_dispatching",
        "_framing",
        "_linger",
        "accepted",
        "boundary",
        "client_addr",
        "closing",
        "current",
        "dead",
        "deadline_at",
        "discarding",
        "handled",
        "idle",
        "idle_since",
        "last_item",
        "loop",
        "parser",
        "paused",
        "peer_b",
        "peer_ip",
        "proxy_buf",
        "queue",
        "request_count",
        "sni",
        "transport",
        "tunnel",
        "upgrade_tail",
        "write_paused",
    )

    def __init__(self, listener: Listener) -> None:
        self.L = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None
        # aiohttp's parser stands between two messages (it has been fed nothing, or its
        # last read ended with a whole bodyless kept-alive request): a read may then go to
        # the listener's BodylessParser instead, and aiohttp's parser never knows.
        self.boundary = True
        # Requests waiting their turn; made on first use (an empty deque is ~600 bytes,
        # and most connections never pipeline).
        self.queue: deque[tuple[Any, Any] | ParseFailure] = NO_QUEUE
        self.current: Forward | None = None
        self.tunnel: Forward | None = None
        self.discarding: Any = None  # an answered request's body, read and dropped
        self.accepted = False
        self.closing = False
        self.dead = False
        self.paused = 0
        self.write_paused = False
        self.request_count = 0
        self.handled = 0
        self.idle = False
        self.idle_since = 0.0
        # The header deadline (0: none) and the keep-alive clock are checked by the
        # engine's sweep (engine.TICK_S), not by a uvloop timer each: a timer handle per
        # connection is memory every idle connection pays, and a timer armed and
        # cancelled per request is CPU every request pays.
        self.deadline_at = 0.0
        self._linger: asyncio.TimerHandle | None = None
        self._dispatching = False
        self._framing: ChunkedFraming | None = None
        self.last_item: tuple[Any, Any] | None = None
        self.upgrade_tail: bytes | None = None
        self.proxy_buf: bytearray | None = None
        self.client_addr: str | None = None
        self.peer_ip = "unknown"
        self.peer_b = b"unknown"
        self.sni: str | None = None

    # -- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        L = self.L
        rt = L.runtime
        snap = rt.snapshot
        if not rt.admit(L.name):
            # Refused at once: an RST costs the client nothing and frees the slot now.
            cast(asyncio.Transport, transport).abort()
            return
        self.accepted = True
        L.connections.add(self)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_ip = str(peer[0])
            self.peer_b = self.peer_ip.encode("ascii", "replace")
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None:
            self.sni = getattr(ssl_obj, SNI_ATTR, None)
        if snap.listeners[L.name].proxy_protocol:
            self.proxy_buf = bytearray()
        # The parser is made when the first bytes arrive: a connection that sends nothing
        # (pre-opened by a balancer, or a slowloris) costs a few hundred bytes less.
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.accepted:
            return
        self.accepted = False
        self.closing = True
        L = self.L
        L.runtime.connections_open[L.name] -= 1
        L.connections.discard(self)
        self.deadline_at = 0.0
        self.idle = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        cur = self.current or self.tunnel
        self.current = self.tunnel = None
        if cur is not None:
            cur.client_lost()
        self.queue = NO_QUEUE
        self.transport = None

    def eof_received(self) -> bool | None:
        # As aiohttp's server: a half-closed client is closed (the response, if any, is
        # cut); RFC 9112 §9.6 lets a server treat it as the end of the connection.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        cur = self.current or self.tunnel
        if cur is not None:
            cur.client_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        cur = self.current or self.tunnel
        if cur is not None:
            cur.client_resume_writing()
        elif self.queue:
            self._pump_queue()

    # -- reading --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # A bug must not leave a connection hanging: as server.ListenerEngine answers an
        # exception in its handler with "502 gateway error" and logs it. (The body is
        # _data_received's, inline: one Python call less per read.)
        try:
            if self.proxy_buf is not None:
                data = self._proxy_header(data)
                if not data:
                    return
            tunnel = self.tunnel
            if tunnel is not None:
                tunnel.client_data(data)
                return
            if self.closing or self.dead:
                return
            if self.upgrade_tail is not None:
                # An upgrade request awaits its answer: what follows is not HTTP/1.1.
                self.upgrade_tail += data
                if len(self.upgrade_tail) > HOLD_LIMIT:
                    self._pause(P_WAIT)
                return
            self.idle = False
            exc: BaseException | None = None
            messages: Any
            bodyless = self.L.bodyless
            # The common read first: BodylessParser declines a read holding more than one
            # head (or anything after its head), so no search for a second one is needed.
            head = (
                bodyless.parse(data)
                if self.boundary and bodyless is not None and data[-4:] == HEADER_SEP
                else None
            )
            if head is not None:
                if (
                    self.current is None
                    and not self.queue
                    and not self.write_paused
                    and self.discarding is None
                ):
                    # The common read, and nothing before it owed an answer: what the end
                    # of this method does with one bodyless request, without the list.
                    self.deadline_at = 0.0
                    self.request_count += 1
                    self.last_item = None
                    self._handle(head, EMPTY_PAYLOAD)
                    return
                messages, upgraded, tail = [(head, EMPTY_PAYLOAD)], False, b""
            # (bytes.partition takes its one argument as it is; bytes.find builds and
            # parses an argument tuple: about 200 instructions more for the same search)
            elif not data.partition(HEADER_SEP)[2] and not PYTHON_PARSER:
                # At most one header block, at the end: one feed (_parse, inline).
                parser = self.parser
                if parser is None:
                    parser = self.parser = self.L.new_parser()
                try:
                    # Typed as a tuple: the compiled build then unpacks it in C, not
                    # through Python's iterator protocol.
                    fed: tuple[Any, Any, Any] = parser.feed_data(data)
                    messages, upgraded, tail = fed
                except Exception as error:
                    messages, upgraded, tail, exc = (), False, b"", error
                if bodyless is not None:  # (the interpreted build has none to offer)
                    self.boundary = exc is None and self._ends_between(data, messages, upgraded)
            else:
                messages, exc, upgraded, tail = self._parse(data)
            if self.discarding is not None:
                self._discard()
            cur = self.current
            if cur is not None and cur.body_open:
                cur.pump_body()
            if upgraded:
                self.upgrade_tail = tail
            # The header deadline, as server._Handler: a whole header block arrived, or an
            # idle keep-alive connection received the start of its next request.
            if messages:
                self.deadline_at = 0.0
                self.request_count += len(messages)
                # Untyped on purpose: typed as a tuple, the compiled build holds it unboxed
                # and stores a new tuple in last_item, and _parse_failed finds the queued
                # request by identity (the adversarial corpus's chunked cases caught it).
                last = messages[-1]
                # Kept only while its body may still be arriving (_parse_failed needs it).
                self.last_item = last if last[1] is not EMPTY_PAYLOAD else None
                if (
                    exc is None
                    and len(messages) == 1
                    and cur is None
                    and not self.queue
                    and not self.write_paused
                ):
                    # The common read: one request, nothing before it owed an answer.
                    self._handle(last[0], last[1])
                    return
                self._enqueue(messages)
            elif self.handled >= self.request_count and not upgraded:
                self._arm_deadline()
            if exc is not None:
                self._parse_failed(exc)
            if self.queue:
                self._pump_queue()
        except Exception:
            self.internal_error()

    def internal_error(self) -> None:
        log.exception("internal error in the fast engine")
        cur = self.current
        if cur is not None and cur.resp is None and not cur.done:
            cur.abandon()
            self.write(prebuilt.plain(502, "502 gateway error\n", self.L.date.line, CLOSE))
            self._close()
        else:
            self._abort()

    def _parse(self, data: bytes) -> tuple[list[Any], BaseException | None, bool, bytes]:
        """Feed the parser; (messages, error, upgraded, bytes after the upgrade request).

        When a read holds more than one header block, it is fed one block at a time: a
        parser error then loses nothing before it, so a good request pipelined ahead of a
        bad one is still answered (aiohttp's feed_data drops the whole read's messages
        when it raises). The common read, one request ending in CRLFCRLF, is one feed.
        """
        if self.parser is None:
            self.parser = self.L.new_parser()
        if PYTHON_PARSER:
            return self._parse_checked(data)
        parser = self.parser
        end = data.find(HEADER_SEP)
        out: list[Any] = []
        track = self.L.bodyless is not None
        self.boundary = False
        try:
            if end < 0 or end + 4 >= len(data):
                messages, upgraded, tail = parser.feed_data(data)
                if track:
                    self.boundary = self._ends_between(data, messages, upgraded)
                # (a list: aiohttp's parser answers an empty read with a tuple)
                return list(messages), None, upgraded, tail
            start = 0
            size = len(data)
            while start < size:
                stop = end + 4 if end >= 0 else size
                piece = data[start:stop]
                messages, upgraded, tail = parser.feed_data(piece)
                out.extend(messages)
                if upgraded:
                    self.boundary = False  # (what follows is not HTTP/1.1)
                    return out, None, True, tail + data[stop:]
                if track:
                    self.boundary = self._ends_between(piece, messages, upgraded)
                start = stop
                end = data.find(HEADER_SEP, start)
            return out, None, False, b""
        except Exception as exc:  # anything the parser raises refuses the request
            self.boundary = False
            return out, exc, False, b""

    @staticmethod
    def _ends_between(data: bytes, messages: Any, upgraded: bool) -> bool:
        """Whether aiohttp's parser, having just been fed ``data`` (which holds at most one
        CRLF CRLF, at its end, or none) and made ``messages`` of it, stands between two
        messages: the last one, a kept-alive request with no body, ended with the read
        (no body, so its head ended at that CRLF CRLF, the only one). Anything else,
        including a body that happens to end with the read, counts as not: the next
        read goes to aiohttp's parser, which costs time, never correctness."""
        if upgraded or not messages or data[-4:] != HEADER_SEP:
            return False
        msg, payload = messages[-1]
        return payload is EMPTY_PAYLOAD and not msg.should_close and not msg.upgrade

    def _parse_checked(self, data: bytes) -> tuple[list[Any], BaseException | None, bool, bytes]:
        """``_parse`` for the pure-Python parser: header block by header block always, and
        the bytes of a chunked body through ``ChunkedFraming`` before the parser."""
        parser = self.parser
        out: list[Any] = []
        start = 0
        size = len(data)
        try:
            while start < size:
                end = data.find(HEADER_SEP, start)
                stop = end + 4 if end >= 0 else size
                piece = data[start:stop]
                if self._framing is not None and self._framing.feed(piece) >= 0:
                    self._framing = None
                messages, upgraded, tail = parser.feed_data(piece)
                out.extend(messages)
                if messages:
                    msg, payload = messages[-1]
                    if msg.chunked and payload is not EMPTY_PAYLOAD and not payload.is_eof():
                        self._framing = ChunkedFraming()
                if upgraded:
                    return out, None, True, tail + data[stop:]
                start = stop
            return out, None, False, b""
        except Exception as exc:
            return out, exc, False, b""

    def _parse_failed(self, exc: BaseException) -> None:
        self.dead = True
        self._pause(P_DEAD)
        reason = failure_reason(exc)
        last = self.last_item
        payload = last[1] if last is not None else EMPTY_PAYLOAD
        if payload is not EMPTY_PAYLOAD and not payload.is_eof():
            # The error is inside the body of the last request parsed.
            if self.queue and self.queue[-1] is last:
                self.queue[-1] = ParseFailure(reason)  # not started: refused as a whole
                return
            cur = self.current
            if cur is not None and cur.payload is payload:
                cur.body_broken(reason)
                return
            self._close()  # already answered: nothing more to say
            return
        self._enqueue([ParseFailure(reason)])

    def _enqueue(self, items: list[Any]) -> None:
        if self.queue is NO_QUEUE:
            self.queue = deque(items)
        else:
            self.queue.extend(items)

    def _discard(self) -> None:
        payload = self.discarding
        # Not contextlib.suppress: it builds a context manager per read (aiohttp's
        # base_protocol avoids it on its read path for the same reason).
        try:  # noqa: SIM105
            payload.read_nowait()
        except Exception:
            pass
        if payload.is_eof():
            self.discarding = None
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None

    def _on_linger(self) -> None:
        self._linger = None
        if self.discarding is not None:
            self._close()  # the body did not end in time: never read it as a request

    # -- dispatching ----------------------------------------------------------------------

    def _pump_queue(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        queue = self.queue
        try:
            # Not while the client's write buffer is full: a read full of tiny pipelined
            # requests must not turn into megabytes of buffered answers.
            while self.current is None and queue and not self.closing and not self.write_paused:
                item = queue.popleft()
                if type(item) is ParseFailure:
                    self._answer_failure(item.reason)
                    break
                msg, payload = cast(tuple[Any, Any], item)
                self._handle(msg, payload)
        finally:
            self._dispatching = False
        if self.closing:
            return
        if queue:
            self._pause(P_PIPELINE)
        elif self.paused & P_PIPELINE:
            self._resume(P_PIPELINE)
        if self.current is None and not queue and self.discarding is None:
            self._become_idle()

    def _handle(self, msg: Any, payload: Any) -> None:
        """server.ListenerEngine.handle, step for step."""
        L = self.L
        rt = L.runtime
        snap = rt.snapshot  # read once: this request is decided by this config only
        view = L.view
        if view.snap is not snap:
            view = L.view_of(snap)
        target: str
        method: str
        values: Sequence[str]
        if isinstance(msg, BodylessHead):
            # The common request: its attributes read as a compiled class's, not by name.
            target, method = msg.path, msg.method
            values, major, minor = msg.headers.hosts, 1, msg.minor
        else:
            target, method, version = msg.path, msg.method, msg.version
            values, major, minor = msg.headers.getall(HOST, ()), version.major, version.minor
        if view.health_path is not None and target == view.health_path:
            self._health(msg, payload)
            return
        if major > 1:
            # "HTTP/2.0" in a request line is not HTTP/2; nginx answers 505 too. Answered
            # as HTTP/1.1 (aiohttp's writer adds no Connection field for a version other
            # than 1.0; llhttp makes it close, aiohttp's Python parser keeps it alive).
            out, forward_host = view.version_refusal, ""
            minor = 1
        elif target[:1] == "/" and method != "CONNECT" and "#" not in target:
            # ListenerPolicy.decide for an origin-form target without a fragment, not
            # CONNECT: exactly its decide_host(value), one call less on the hot path.
            if len(values) == 1:
                out, forward_host = view.decide_host(values[0])
            else:
                out, forward_host = view.decide(values, method, target)
        else:
            out, forward_host = view.decide(values, method, target)
        if not out.refuse and not target.isascii():
            # Raw non-ASCII bytes in the target: not a request-target (RFC 9112 §3.2,
            # RFC 3986 §2). Refused like the other bad targets the policy refuses ("*",
            # a fragment); the aiohttp engine forwards it percent-encoded by yarl, which
            # is not the target the client sent.
            out, forward_host = view.refusals["bad_request"], ""
        if view.tls and forward_host and not self._sni_matches(forward_host):
            out = view.refusals["sni_mismatch"]
        counters = L.counters
        counters[out.slot] += 1
        if out.disagreement_slot >= 0:
            counters[out.disagreement_slot] += 1
        ready = L.ids.ready
        rid = ready.pop() if ready else L.ids.next()
        if out.noted:
            # server.ListenerEngine._note_refusal, inline: the top blocked hosts
            # (Runtime.note_blocked) and the rate-limited refusal log, whose line is
            # built only when the limit lets it through (a flood does not pay for it).
            if len(values) == 1:
                pending = L.blocked_pending
                key = (out.decision, values[0])
                pending[key] = pending.pop(key, 0) + 1
                if len(pending) >= FOLD_AT:
                    rt.fold_blocked()
            log = L.refusal_log
            if CLOCK() < log.empty_until:
                log.suppressed += 1  # RefusalLog.take's flood case, inline
            elif log.take():
                self._log_refusal(values, out.decision, rid, snap)
        if out.refuse:
            self._refuse(msg, payload, out, rid, snap, minor)
            return
        env = out.env
        assert env is not None
        if payload is not EMPTY_PAYLOAD:
            cl = content_length(msg)
            if cl is not None and cl > env.max_body_bytes:
                refusal = view.refusals["body_too_large"]
                counters[refusal.slot] += 1
                counters[out.slot] -= 1  # counted once: as refused, not as allowed
                self._refuse(msg, payload, refusal, rid, snap, minor)
                return
        fwd = Forward(self, msg, payload, out.decision, env, forward_host, rid, view)
        self.current = fwd
        fwd.start()

    def _log_refusal(self, values: Any, decision: Decision, rid: bytes, snap: Snapshot) -> None:
        host, reason = logged_fields(values, decision)
        self.L.runtime.refusal_log.write(
            "would block (report mode)" if decision.would_block else "refused",
            {
                "request_id": rid.decode("ascii"),
                "listener": self.L.name,
                "environment": decision.environment,
                "reason": reason,
                "host": host,
                "client": self.client_addr or self.peer_ip,
                "config": snap.short_sha,
            },
        )

    def mode_for(self, msg: Any) -> int:
        if msg.should_close or self.L.draining:
            return CLOSE
        return KEEP_10 if msg.version.minor == 0 else KEEP_11

    def _refuse(
        self, msg: Any, payload: Any, out: Outcome, rid: bytes, snap: Snapshot, minor: int
    ) -> None:
        L = self.L
        tpl = out.refusal
        if tpl is None:
            # blocked_response "close": drop the connection unanswered, like nginx's 444.
            self._abort()
            return
        if msg.should_close or L.draining or self.upgrade_tail is not None:
            mode = CLOSE  # (what follows an upgrade request is not a next request)
        else:
            mode = KEEP_10 if minor == 0 else KEEP_11
        if payload is not EMPTY_PAYLOAD:
            cl = content_length(msg)
            if cl is None or cl > DISCARD_LIMIT or out.body_too_large:
                mode = CLOSE
        method: str = msg.method
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(tpl.render(rid, L.date.line, mode, method == "HEAD"))
        if L.access_log is not None:
            L.access(
                out.decision, out.status, rid, snap.short_sha,
                self.client_addr or self.peer_ip, method, None, 0.0,
            )  # fmt: skip
        if (
            mode != CLOSE
            and payload is EMPTY_PAYLOAD
            and self.last_item is None
            and not self._dispatching
            and not self.queue
            and not self.paused
            and self.discarding is None
        ):
            # finish(), for the usual refusal (keep-alive, no body, nothing queued): the
            # connection goes idle.
            self.handled += 1
            self.idle = True
            self.idle_since = CLOCK()
            return
        self.finish(msg, payload, mode != CLOSE)

    def _health(self, msg: Any, payload: Any) -> None:
        rt = self.L.runtime
        mode = self.mode_for(msg)
        if self.upgrade_tail is not None:
            mode = CLOSE
        status, text = (200, "ok\n") if rt.ready else (503, "draining\n")
        self.write(prebuilt.plain(status, text, self.L.date.line, mode, msg.method == "HEAD"))
        self.finish(msg, payload, mode != CLOSE)

    def _answer_failure(self, reason: str) -> None:
        """400 for a request the parser refused, counted like any refusal; then close."""
        L = self.L
        rt = L.runtime
        snap = rt.snapshot
        decision = snap.listeners[L.name].refusals[reason]
        rt.counters.values[decision.slot] += 1
        self.write(L.refusal(decision, snap).render(L.ids.next(), L.date.line, CLOSE, False))
        self.handled += 1
        self._close()

    def finish(self, msg: Any, payload: Any, keep_alive: bool) -> None:
        """The response to ``msg`` is written (or being streamed to its end)."""
        self.handled += 1
        last = self.last_item
        if last is not None and last[1].is_eof():
            self.last_item = None
        if not keep_alive or self.L.draining:
            self._close()
            return
        if payload is not EMPTY_PAYLOAD and not payload.is_eof():
            self.discarding = payload
            self._discard()
            if self.discarding is not None:
                self._linger = self.loop.call_later(LINGER_S, self._on_linger)
        if self._dispatching:
            return  # _pump_queue goes on with the next one
        if self.queue:
            self._pump_queue()
        elif self.discarding is None and self.current is None:
            if self.paused & P_PIPELINE:
                self._resume(P_PIPELINE)
            # _become_idle, inline (every keep-alive response ends here).
            self.idle = True
            self.idle_since = CLOCK()

    def _become_idle(self) -> None:
        self.idle = True
        self.idle_since = CLOCK()

    # -- header deadline and keep-alive timeout (checked by the engine's sweep) -------------

    def _arm_deadline(self) -> None:
        if not self.deadline_at:
            timeout = self.L.runtime.snapshot.config.timeouts.header_s
            self.deadline_at = CLOCK() + timeout

    def check_timeouts(self, now: float, keepalive_s: float) -> None:
        if self.deadline_at and now >= self.deadline_at:
            # The header block did not arrive in time (slowloris): nginx's
            # client_header_timeout, counted as a refused connection.
            self.deadline_at = 0.0
            self.L.runtime.refused_connection(self.L.name, "header_timeout")
            self._abort()
        elif self.idle and now - self.idle_since >= keepalive_s and not self.closing:
            self._close()  # nginx keepalive_timeout

    # -- PROXY protocol, SNI --------------------------------------------------------------

    def _proxy_header(self, data: bytes) -> bytes:
        assert self.proxy_buf is not None
        self.proxy_buf += data
        try:
            header = proxy_protocol.parse(bytes(self.proxy_buf))
        except proxy_protocol.ProxyProtocolError as exc:
            self.L.runtime.refused_connection(self.L.name, "proxy_protocol")
            log.info("closing connection: %s", exc)
            self.proxy_buf = None
            self._abort()
            return b""
        if header is None:
            return b""
        rest = bytes(self.proxy_buf[header.consumed :])
        self.proxy_buf = None
        if header.client is not None and self._trusted(self.peer_ip):
            self.client_addr = header.client
        return rest

    def _trusted(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.L.runtime.snapshot.loaded.trusted_proxies)

    def _sni_matches(self, forward_host: str) -> bool:
        return sni_matches(self.sni, forward_host)

    # -- transport helpers ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(data)

    def write_parts(self, parts: list[bytes]) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        if len(parts) == 1:
            transport.write(parts[0])
        elif sum(map(len, parts)) < 65536:
            transport.write(b"".join(parts))  # small: one copy, one send
        else:
            transport.writelines(parts)  # large: no copy of the body

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def _close(self) -> None:
        """Close after what is buffered has been written."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its response."""
        if self.current is None and self.tunnel is None and not self.queue:
            self._close()


class Forward:
    """One allowed request on its way to an upstream and back."""

    __slots__ = (
        "L",
        "activity",
        "body_open",
        "body_seen",
        "chunked_up",
        "cl",
        "client",
        "conn",
        "connecting",
        "decision",
        "done",
        "env",
        "forward_host",
        "head",
        "held",
        "method",
        "minor",
        "mode",
        "msg",
        "next_i",
        "order",
        "out",
        "payload",
        "resp",
        "retried",
        "reused",
        "rid",
        "route",
        "started",
        "status",
        "tunnel",
        "until_eof",
        "upgrade",
        "view",
    )

    def __init__(
        self,
        client: ClientConnection,
        msg: Any,
        payload: Any,
        decision: Decision,
        env: EnvPolicy,
        forward_host: str,
        rid: bytes,
        view: ListenerView,
    ) -> None:
        self.client = client
        self.L = client.L
        self.msg = msg
        self.payload = payload
        self.decision = decision
        self.env = env
        self.forward_host = forward_host
        self.rid = rid
        self.view = view
        self.method: str
        if isinstance(msg, BodylessHead):
            self.method, close, minor = msg.method, False, msg.minor
        else:
            self.method, close, minor = msg.method, msg.should_close, msg.version.minor
        self.body_open = payload is not EMPTY_PAYLOAD
        self.body_seen = 0
        self.chunked_up = False
        self.cl: int | None = None
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.route: Route | None = None
        self.order: Sequence[int] = ()
        self.next_i = 0
        self.head = b""
        self.reused = False
        self.retried = False
        # The final response's status once its head arrived (None: not yet).
        self.resp: int | None = None
        self.until_eof = False  # its body ends when the upstream closes the connection
        self.held: bytes | None = None
        self.status = 0
        self.out = OUT_NONE
        # ClientConnection.mode_for, inline.
        self.minor: int = minor
        self.mode = CLOSE if close or client.L.draining else KEEP_10 if minor == 0 else KEEP_11
        self.activity = 0.0
        self.started = 0.0
        self.done = False
        self.tunnel = False
        self.upgrade = client.upgrade_tail is not None

    # -- request --------------------------------------------------------------------------

    def start(self) -> None:
        L = self.L
        msg = self.msg
        client = self.client
        L.in_flight[L.name] += 1
        self.started = now = CLOCK()
        # The head sent upstream (proxy.upstream_headers's rules, headers.request_head).
        peer = client.client_addr or client.peer_ip
        trusted = self.view.trusted_proxies
        # client_address() returns the peer for both unless a trusted proxy sent XFF:
        # skip the header lookup when no proxy is trusted.
        xff = (
            client_address(peer, msg.headers.get(hdrs.X_FORWARDED_FOR), trusted)[1]
            if trusted
            else peer
        )
        if self.body_open:
            cl = self.cl = content_length(msg)
            # A client that sent "Expect: 100-continue" waits for this before sending its
            # body: the decision is made, so ask for it now rather than let its timer run.
            if msg.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
                client.write(prebuilt.CONTINUE)
            if cl is not None:
                framing = b"Content-Length: %d\r\n" % cl
            else:
                self.chunked_up = True
                framing = b"Transfer-Encoding: chunked\r\n"
        elif self.method not in GET_METHODS:
            framing = b"Content-Length: 0\r\n"  # as aiohttp's client
        else:
            framing = b""
        if self.upgrade:
            # Hop-by-hop, so dropped like any; an upgrade needs them (nginx's WebSocket
            # proxying sets the same two).
            upgrade = msg.headers.get(hdrs.UPGRADE, "websocket")
            framing += b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade.encode(
                "utf-8", "surrogateescape"
            )
        target: str
        raw_headers: Sequence[tuple[bytes, bytes]]
        if isinstance(msg, BodylessHead):
            # (the same words, but here the compiled build reads the fields of its own
            # class; in the other branch, of aiohttp's message, by name)
            target, raw_headers = msg.path, msg.raw_headers
        else:
            target, raw_headers = msg.path, msg.raw_headers
        method = self.method
        method_sp = METHOD_SP.get(method)
        if method_sp is None:
            method_sp = b"".join((method.encode("ascii"), b" "))
        self.head = request_head(
            method_sp,
            (target if target[:1] == "/" else origin_form(target)).encode(
                "utf-8", "surrogateescape"
            ),
            raw_headers,
            self.view.host_lines(self.forward_host),
            client.peer_b if xff is client.peer_ip else xff.encode("ascii", "replace"),
            self.rid,
            framing,
        )
        env = self.env
        route = L.pools.routes.get(id(env))
        if route is None or route.env is not env:
            route = L.pools.route(env)
        self.route = route
        if route.single:
            self.order = ONLY_FIRST
            idle = route.idle[0]
            while idle:  # UpstreamPools.checkout, inline on the hot path
                conn = idle.pop()
                transport = conn.transport
                if not conn.closed and transport is not None and not transport.is_closing():
                    self.next_i = 1
                    self._attach(conn, True, now)
                    return
        else:
            self.order = route.pool.order(now)
        self._next_upstream()

    def _next_upstream(self) -> None:
        route = self.route
        assert route is not None
        order = self.order
        while self.next_i < len(order):
            i = order[self.next_i]
            self.next_i += 1
            conn = UpstreamPools.checkout(route.idle[i])
            if conn is not None:
                self._attach(conn, True)
                return
            self.connecting = self.L.spawn(self._connect(i))
            return
        if self.upgrade:
            self._fail(502, "upstream refused the WebSocket")
        else:
            self._fail(502, f"no upstream of {self.env.name!r} accepted the connection")

    async def _connect(self, i: int) -> None:
        L = self.L
        route = self.route
        assert route is not None
        try:
            conn = await L.pools.connect(route, i, self.env.connect_s)
        except TimeoutError:
            self.connecting = None
            if self.done:
                return
            # As the aiohttp engine: a connect timeout is 504, not a refusal.
            L.pools.stats.error(self.env.name, "timeout")
            self._fail(504, "upstream did not answer in time")
            return
        except OSError:
            self.connecting = None
            if self.done:
                return
            route.pool.mark_down(i, CLOCK())
            L.pools.stats.error(self.env.name, "connect")
            self._next_upstream()
            return
        self.connecting = None
        if self.done:
            L.pools.checkin(conn)  # a fresh connection nobody waits for: keep it
            return
        self._attach(conn, False)

    def _attach(self, conn: UpstreamConnection, reused: bool, now: float = 0.0) -> None:
        self.conn = conn
        self.reused = reused
        conn.user = self
        conn.expect(self.method == "HEAD")
        transport = conn.transport
        assert transport is not None
        client = self.client
        if client.write_paused:
            transport.pause_reading()
        if self.body_open:
            parts = [self.head]
            self._body_parts(parts)
            if self.cl is None and self.body_seen > self.env.max_body_bytes:
                self.body_broken("body_too_large")  # nothing sent upstream yet
                return
            transport.writelines(parts)
            if client.paused & P_WAIT and not self.upgrade:
                client._resume(P_WAIT)
        else:
            transport.write(self.head)
        L = self.L
        self.activity = now or CLOCK()
        L.active.add(self)

    def _body_parts(self, parts: list[bytes]) -> None:
        """Move what the request parser holds of the body into ``parts``, framed."""
        payload = self.payload
        data = payload.read_nowait()
        if data:
            n = len(data)
            self.body_seen += n
            if self.chunked_up:
                parts += (b"%x\r\n" % n, data, b"\r\n")
            else:
                parts.append(data)
        if payload.is_eof():
            if self.chunked_up:
                parts.append(b"0\r\n\r\n")
            self.body_open = False

    def pump_body(self) -> None:
        """Client bytes arrived while this request's body is open."""
        conn = self.conn
        if conn is None or conn.transport is None:
            # Not connected yet: the parser holds what came; read no more meanwhile.
            self.client._pause(P_WAIT)
            return
        parts: list[bytes] = []
        try:
            self._body_parts(parts)
        except Exception:
            self.body_broken("bad_request")
            return
        if self.cl is None and self.body_seen > self.env.max_body_bytes:
            self.body_broken("body_too_large")
            return
        if parts:
            conn.transport.writelines(parts)
            self.activity = CLOCK()

    def body_broken(self, reason: str) -> None:
        """The request's body is refused (the parser refused the rest of it, or a chunked
        body grew past the limit): answered with the refusal if nothing was answered yet."""
        if self.resp is not None:
            self._abort_client()
            return
        refusal = self._recount(reason)
        self._detach(reusable=False)
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self.mode = CLOSE
        L = self.L
        self.client.write(
            L.refusal(refusal, self.view.snap).render(
                self.rid, L.date.line, CLOSE, self.method == "HEAD"
            )
        )
        self._complete()

    def _recount(self, reason: str) -> Decision:
        """Refused after its decision, for its body: counted once, as refused for
        ``reason``, not as allowed, and logged so."""
        refusal = self.view.lp.refusals[reason]
        counters = self.L.counters
        counters[refusal.slot] += 1
        counters[self.decision.slot] -= 1
        self.decision, self.status = refusal, refusal.status
        return refusal

    # -- response -------------------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if self.tunnel:
            self.activity = CLOCK()
            self.client.write(data)
            return
        conn = self.conn
        assert conn is not None and conn.parser is not None
        tail = b""
        conn.fed += len(data)
        try:
            conn.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            tail = data[exc.args[0] :]
        except HttpParserCallbackError as exc:
            if exc.__context__ is not None:
                raise  # the callbacks only record: an error there is a bug (internal_error)
            self._upstream_failed("protocol", "upstream sent an invalid response")
            return
        except Exception:
            if not (conn.head_only and conn.complete):
                self._upstream_failed("protocol", "upstream sent an invalid response")
                return
            # Bytes after a HEAD response's head that the old parser read as its body:
            # the response stands (aiohttp's parser skips a HEAD response's body), the
            # connection is not reused.
            conn.unsolicited = True
        heads = conn.heads
        if heads:
            # A head in one read, starting it, under aiohttp's limits, with no control
            # character (tab included) and no space before a line end, is relayed as
            # llhttp reported it; any other (interim heads too) is looked at field by
            # field (response_fields: aiohttp's checks, and its whitespace stripping).
            end = data.find(HEAD_END)
            check = (
                end < 12  # none, or CRLFs before the status line (llhttp skips them)
                or end > MAX_FIELD
                or len(heads) > 1
                or conn.fed != len(data)
                or (scan := data[: end + 2].translate(HEAD_SCAN)).find(b" \n") >= 0
                or NUL in scan
            )
            for code, reason, headers in heads:
                if check or len(headers) > MAX_HEADERS:
                    try:
                        headers = response_fields(reason, headers, code >= 200)
                    except BadResponse:
                        heads.clear()
                        self._upstream_failed("protocol", "upstream sent an invalid response")
                        return
                if code < 200 and code != 101:
                    continue  # interim (103 Early Hints...): swallowed, as aiohttp's client does
                if self.resp is not None:
                    conn.unsolicited = True  # a second response to one request: never reuse
                    break
                self._response_head(code, reason, headers)
                if self.tunnel:
                    heads.clear()
                    if tail:
                        self.client.write(tail)
                    return
                if self.done:
                    heads.clear()
                    return
            heads.clear()
            if conn.finals > 1:
                conn.unsolicited = True
        if self.resp is not None:
            if conn.headers:
                conn.headers.clear()  # trailer fields: not relayed
            self._pump_response(conn.complete)
            if self.done:
                return
        # What is not body (heads, chunk framing, trailers) is bounded, as aiohttp's
        # limits bound it; httptools joins a field's pieces without a limit.
        if conn.fed > MAX_HEAD + 64 * conn.chunks:
            self._upstream_failed("protocol", "upstream sent an invalid response")
            return
        self.activity = CLOCK()

    def _response_head(self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Build the head relayed to the client (as proxy.Forwarder._relay): the upstream's
        fields minus hop-by-hop ones, X-Request-ID and, when exposed, X-Gateway-Config
        in place of any the upstream sent, the framing the aiohttp engine would use."""
        L = self.L
        if self.upgrade and code != 101:
            # As the aiohttp engine (its ws_connect failed): the gateway's own 502 and an
            # upstream "connect" error, not the upstream's answer; and no tunnel.
            self._upstream_failed("connect", "upstream refused the WebSocket")
            return
        if code == 101:
            if not self.upgrade or any(
                RESPONSE_SPECIAL.get(n.lower()) == _INVALID for n, _ in headers
            ):
                # (aiohttp's parser refuses the old handshake's field in any response)
                self._upstream_failed("protocol", "upstream sent an invalid response")
                return
            self._count_response(code)
            self._start_tunnel(reason, headers)
            return
        view = self.view
        expose = view.expose_config
        route = self.route
        assert route is not None
        # One list of parts and one join; a field usually costs one lookup or two.
        # An environment's upstreams answer with one status line, mostly: kept on its route.
        if code == route.status_code and reason == route.status_reason:
            line = route.status_line
        else:
            line = route.status_line = prebuilt.relayed_status_line(code, reason)
            route.status_code = code
            route.status_reason = reason
        parts = [line]
        has_date = False
        length = None
        te = None
        listed: set[str] | None = None
        for name, value in headers:
            kind: int | None = _PLAIN
            if not name or SPECIAL_KEYS[_name_key(name)]:
                kind = RESPONSE_SENT.get(name)
                if kind is None:
                    kind = RESPONSE_SPECIAL.get(name.lower(), _PLAIN)
            if kind:
                if kind == _LENGTH:
                    length = value  # llhttp checked it: digits, one value
                    continue
                if kind == _DROPPED or (kind == _CONFIG and expose):
                    continue
                if kind == _CONN:
                    if value not in CONNECTION_PLAIN:
                        tokens = connection_tokens(value)
                        listed = tokens if listed is None else listed | tokens
                    continue
                if kind == _DATE:
                    has_date = True
                elif kind == _TE:
                    te = value if te is None else b",".join((te, value))
                    continue
                elif kind == _INVALID:
                    self._upstream_failed("protocol", "upstream sent an invalid response")
                    return
            # (appends: ``parts += (...)`` builds a tuple per field)
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
        if listed:
            drop_listed(parts, 1, listed)  # rare: a Connection header naming fields
            if "date" in listed:
                has_date = False
        self._count_response(code)
        parts += (b"X-Request-ID: ", self.rid, b"\r\n")
        if expose:
            parts += (b"X-Gateway-Config: ", view.config_sha, b"\r\n")
        no_status_body = code == 204 or code == 304  # (proxy.NO_BODY_STATUS, compared)
        no_body = no_status_body or self.method == "HEAD"
        if length is not None and not no_status_body:
            # llhttp took it as a number, so it is digits: written back without leading
            # zeros, as the aiohttp engine's writer prints the int (no % formatting: slow).
            if length[0] == 0x30:
                length = length.lstrip(b"0") or b"0"
            parts += (b"Content-Length: ", length, b"\r\n")
            self.out = OUT_NONE if no_body else OUT_LENGTH
        elif no_body:
            self.out = OUT_NONE
        else:
            # No length and not chunked (its last coding, RFC 9112 §6.3): llhttp reads the
            # body until the upstream closes.
            # (llhttp strips spaces only: "chunked\t" is not chunked to it)
            self.until_eof = te is None or (
                te.rsplit(b",", 1)[-1].strip(b" ").lower() != b"chunked"
            )
            if self.minor >= 1:
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self.out = OUT_CHUNKED
            else:
                self.out = OUT_EOF  # an HTTP/1.0 client: the body ends when the connection does
                self.mode = CLOSE
        if L.draining:
            self.mode = CLOSE
        if not has_date:
            parts.append(L.date.line)
        parts.append(prebuilt.CONNECTION_END[self.mode])
        # Not written yet: _pump_response sends it with the body bytes of the same read,
        # in one write (a small response in two segments costs a syscall, and the client
        # a second read).
        self.held = b"".join(parts)

    def _count_response(self, code: int) -> None:
        """The final response's head is accepted (UpstreamStats.response, with the slots
        cached on the route)."""
        self.resp = code
        self.status = code
        route = self.route
        assert route is not None
        klass = code // 100
        route.values[route.code_slots[(1 if klass < 1 else 5 if klass > 5 else klass) - 1]] += 1
        route.observe(CLOCK() - self.started)

    def _pump_response(self, eof: bool) -> None:
        """Relay the body bytes the parser reported (and the held head); ``eof``: the
        response ended."""
        conn = self.conn
        assert conn is not None
        head = self.held
        self.held = None
        body = conn.body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            conn.fed -= len(data)  # upstream_data bounds what is not body
        else:
            data = b""
        out = self.out
        client = self.client
        transport = client.transport
        if transport is None or client.closing:
            pass  # the client is gone: nothing to write (ClientConnection.write)
        elif data and out != OUT_NONE:
            if out == OUT_CHUNKED:
                data = b"%x\r\n%s\r\n" % (len(data), data)
                if eof:
                    data += b"0\r\n\r\n"
            if head is None:
                transport.write(data)
            elif len(data) < 65536:
                transport.write(b"".join((head, data)))  # one copy of a small body, one send
            else:
                transport.writelines((head, data))
        elif head is not None:
            transport.write(b"".join((head, b"0\r\n\r\n")) if eof and out == OUT_CHUNKED else head)
        elif eof and out == OUT_CHUNKED:
            transport.write(b"0\r\n\r\n")
        if eof:
            self._response_done()

    def _response_done(self) -> None:
        conn = self.conn
        if (
            conn is not None
            and conn.keep
            and not self.body_open
            and not conn.unsolicited
            and not conn.closed
        ):
            # _detach(reusable=True), inline: the path every kept-alive response takes.
            self.conn = None
            conn.user = None
            client = self.client
            if conn.write_paused:
                client._resume(P_UPSTREAM)
            if client.write_paused and conn.transport is not None:
                conn.transport.resume_reading()
            self.L.pools.checkin(conn)
        else:
            self._detach(reusable=False)
        self._complete()

    def _start_tunnel(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """101 Switching Protocols: from now on bytes pass both ways untouched."""
        client = self.client
        L = self.L
        parts = [prebuilt.relayed_status_line(101, reason)]
        has_date = False
        for name, value in headers:
            lname = name.lower()
            # Connection and Upgrade are what a 101 is about; the rest of the hop-by-hop
            # set goes, as for any response.
            if lname in DROP_RESPONSE_B and lname not in (b"connection", b"upgrade"):
                continue
            if lname == b"x-request-id":
                continue
            if lname == b"date":
                has_date = True
            parts += (name, b": ", value, b"\r\n")
        parts += (b"X-Request-ID: ", self.rid, b"\r\n")
        if not has_date:
            parts.append(L.date.line)
        parts.append(b"\r\n")
        client.write(b"".join(parts))
        self.tunnel = True
        self.body_open = False
        client.current = None
        client.tunnel = self
        tail = client.upgrade_tail or b""
        client.upgrade_tail = None
        conn = self.conn
        assert conn is not None and conn.transport is not None
        if tail:
            conn.transport.write(tail)
        client._resume(P_WAIT)
        self.activity = CLOCK()
        L.active.add(self)

    def client_data(self, data: bytes) -> None:
        """Tunnel: bytes from the client."""
        conn = self.conn
        if conn is not None and conn.transport is not None:
            self.activity = CLOCK()
            conn.transport.write(data)

    # -- failures, timeouts -----------------------------------------------------------------

    def upstream_lost(self) -> None:
        conn = self.conn
        if self.tunnel:
            self._detach(reusable=False)
            self.client._close()  # after what the upstream sent has been written
            self._complete(finish=False)
            return
        if self.resp is None:
            if (
                self.reused
                and not self.retried
                and self.method in IDEMPOTENT
                and self.payload is EMPTY_PAYLOAD
            ):
                # A keep-alive connection the upstream had closed while idle: retried once
                # on a new connection (RFC 9112 §9.3.1; aiohttp's client does the same).
                self.retried = True
                self._detach(reusable=False)
                i = self.order[self.next_i - 1]
                self.connecting = self.L.spawn(self._connect(i))
                return
            self._upstream_failed("reset", "upstream closed the connection")
            return
        if conn is not None and not conn.complete:
            # A body delimited by the end of the connection ends here; a framed one that
            # did not end is a truncated response.
            if self.until_eof:
                self._pump_response(True)
            else:
                self._upstream_failed("reset", "upstream sent a broken response")

    def _upstream_failed(self, kind: str, text: str) -> None:
        if self.done:
            return
        if self.upgrade and self.resp is None:
            # Whatever went wrong before the tunnel, the aiohttp engine's ws_connect
            # failed: one answer and one error kind for it.
            kind, text = "connect", "upstream refused the WebSocket"
        self.L.pools.stats.error(self.env.name, kind)
        if self.resp is None:
            self._fail(502, text)
        else:
            # Headers are gone already; the only honest signal left is to cut the
            # connection so the client sees a truncated body, not a complete one.
            self._abort_client()

    def _fail(self, status: int, text: str) -> None:
        """The gateway's own answer instead of the upstream's (502, 504)."""
        self._detach(reusable=False)
        self.status = status
        if self.upgrade or self.L.draining:
            self.mode = CLOSE
        self.client.write(
            prebuilt.plain(
                status, f"{status} {text}\n", self.L.date.line, self.mode, self.method == "HEAD"
            )
        )
        self._complete()

    def check_timeout(self, now: float) -> None:
        """From the engine's sweep: no upstream progress for read_s is a 504 (or a cut
        response), no traffic on a tunnel for websocket_idle_s closes it. While the
        client's write buffer is full the client is the slow side, not the upstream."""
        if self.done:
            return
        limit = self.view.snap.config.timeouts.websocket_idle_s if self.tunnel else self.env.read_s
        if now - self.activity < limit:
            return
        if self.client.write_paused and not self.tunnel:
            return
        if self.tunnel:
            self._detach(reusable=False)
            self.client._close()
            self._complete(finish=False)
            return
        self.L.pools.stats.error(self.env.name, "timeout")
        if self.resp is None:
            self._fail(504, "upstream did not answer in time")
        else:
            self._abort_client()

    def _abort_client(self) -> None:
        self._detach(reusable=False)
        client = self.client
        self._complete(finish=False)
        client._abort()

    # -- flow control ---------------------------------------------------------------------

    def upstream_pause_writing(self) -> None:
        self.client._pause(P_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self.client._resume(P_UPSTREAM)

    def client_pause_writing(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def client_resume_writing(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.closed:
            self.activity = CLOCK()
            conn.transport.resume_reading()

    # -- the end --------------------------------------------------------------------------

    def _detach(self, reusable: bool) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        conn.user = None
        if conn.write_paused:
            self.client._resume(P_UPSTREAM)
        if reusable:
            if self.client.write_paused and conn.transport is not None:
                conn.transport.resume_reading()
            self.L.pools.checkin(conn)
        elif self.tunnel:
            conn.close()  # after what the client sent has been written
        else:
            conn.abort()

    def abandon(self) -> None:
        """Stop after an internal error: the upstream connection is not reused."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self._detach(reusable=False)
        self._complete(finish=False)

    def client_lost(self) -> None:
        if self.done:
            return
        if self.body_open and self.resp is None:
            # The client went away inside its request's body: a request cut short, refused
            # as bad_request (as a body the parser refuses, body_broken), not allowed; the
            # aiohttp engine counts it so, and nginx logs it as a 400.
            self._recount("bad_request")
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self._detach(reusable=False)
        self._complete(finish=False)

    def _complete(self, finish: bool = True) -> None:
        if self.done:
            return
        self.done = True
        L = self.L
        L.active.discard(self)
        L.in_flight[L.name] -= 1
        client = self.client
        if L.access_log is not None:
            L.access(
                self.decision, self.status, self.rid, self.view.snap.short_sha,
                client.client_addr or client.peer_ip, self.method, self.env.name,
                CLOCK() - self.started,
            )  # fmt: skip
        if client.current is self:
            client.current = None
        if client.tunnel is self:
            client.tunnel = None
        if finish:
            client.finish(self.msg, self.payload, self.mode != CLOSE)
