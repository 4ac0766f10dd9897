"""Forwarding an allowed request to its environment's upstreams (aiohttp engine).

Bodies stream both ways with back-pressure (``resp.write`` waits for the transport to
drain; the client's body is read as the upstream connection asks for it), so memory stays
bounded whatever the body size. Upstream failures are translated here, at the boundary,
into the gateway's own answers: 502 for connect/protocol errors, 504 for timeouts.
A failure after the response head is counted by what failed (``body_failure_kind``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError, PayloadEncodingError
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Upstream
from gateway.counters import Counters, Histogram
from gateway.policy import EnvPolicy

log = logging.getLogger("gateway.proxy")

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies also drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Client-sent headers that frameworks read as "the host/scheme the client used": a client
# must never choose them (contract §2). The gateway sets the X-Forwarded-* ones itself.
SPOOFABLE = frozenset(
    {
        "host",
        "x-forwarded-host",
        "x-forwarded-server",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "x-forwarded-for",
        "x-original-host",
        "x-original-url",
        "x-rewrite-url",
        "x-host",
        "x-http-host-override",
        "x-real-ip",
        "forwarded",
        "x-request-id",
        "expect",
        "content-length",
    }
)
DROP_REQUEST = HOP_BY_HOP | SPOOFABLE
DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
# How long an upstream that refused a connection is skipped (nginx fail_timeout 10 s).
FAIL_TIMEOUT_S = 10.0
STREAM_CHUNK = 64 * 1024
NO_BODY_STATUS = frozenset({204, 304})


# Control characters aiohttp's writer refuses to send in a field or a status line
# ("potential header injection"): an upstream response carrying one is refused as invalid
# (502) by both engines, rather than failing while it is written. Matched on str (bytes
# read as Latin-1, one character each).
FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def connection_tokens(value: bytes) -> set[str]:
    """The field names one ``Connection`` value lists, lowercased. Read as Latin-1 and
    stripped as ``str``, which strips more than ``bytes.strip()`` (NBSP, NEL, \\x1c-\\x1f):
    both engines, requests and responses, split it here."""
    return {t.strip().lower() for t in value.decode("latin-1").split(",")}


def connection_listed(raw_headers: Sequence[tuple[bytes, bytes]]) -> set[str]:
    """The field names a message's ``Connection`` headers list (lowercased): hop-by-hop
    for this connection only, so a proxy removes them before forwarding (RFC 9110
    §7.6.1), in requests and in responses alike."""
    listed: set[str] = set()
    for raw_name, value in raw_headers:
        if raw_name.lower() == b"connection":
            listed |= connection_tokens(value)
    return listed


def header_text(raw: bytes) -> str:
    """A header value as aiohttp wants it (str, written back as UTF-8): UTF-8 bytes
    round-trip exactly; anything else (obs-text) is read as Latin-1, the only decoding
    that cannot fail, rather than refusing the request."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class RelayResponse(web.StreamResponse):
    """A relayed response: aiohttp adds ``Content-Type: application/octet-stream`` to a
    response without one, but a proxy must not invent a media type (RFC 9110 §8.3)."""

    def __init__(self, *, status: int, reason: str | None, has_type: bool) -> None:
        super().__init__(status=status, reason=reason)
        self._has_type = has_type

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if not self._has_type:
            self.headers.popall("Content-Type", None)


class BodyTooLarge(Exception):
    pass


class ClientBodyError(Exception):
    """The client's body broke off or did not parse (a bad chunk size arriving after the
    request was dispatched): the client's fault, answered 400, never blamed on upstream."""


def client_body_failed(request: web.BaseRequest) -> bool:
    return request.body_exists and request.content.exception() is not None


class UpstreamPool:
    """Round robin over an environment's upstreams, skipping recently refusing ones."""

    __slots__ = ("_down_until", "_next", "upstreams")

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = tuple(upstreams)
        self._next = 0
        self._down_until = [0.0] * len(self.upstreams)

    def order(self, now: float) -> list[int]:
        n = len(self.upstreams)
        start = self._next
        self._next = (start + 1) % n
        idx = [(start + k) % n for k in range(n)]
        up = [i for i in idx if self._down_until[i] <= now]
        # All marked down: try them anyway rather than refuse outright (nginx does too).
        return up or idx

    def mark_down(self, i: int, now: float) -> None:
        self._down_until[i] = now + FAIL_TIMEOUT_S


class UpstreamStats:
    """Per-environment upstream counters, slots fixed at first use of the environment."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self.histograms: dict[str, Histogram] = {}
        self._code_slots: dict[str, list[int]] = {}
        self._error_slots: dict[str, dict[str, int]] = {}

    def _env(self, env: str) -> None:
        if env not in self._code_slots:
            self._code_slots[env] = [
                self._counters.slot("gateway_upstream_responses_total", (env, f"{k}xx"))
                for k in range(1, 6)
            ]
            self._error_slots[env] = {
                kind: self._counters.slot("gateway_upstream_errors_total", (env, kind))
                for kind in ("connect", "timeout", "reset", "protocol")
            }
            self.histograms[env] = Histogram()

    def response_slots(self, env: str) -> tuple[list[int], Histogram]:
        """The counter slots of ``env``'s responses (1xx..5xx) and its latency histogram,
        for an engine that counts a response with two increments on its hot path."""
        self._env(env)
        return self._code_slots[env], self.histograms[env]

    def response(self, env: str, status: int, seconds: float) -> None:
        self._env(env)
        klass = min(max(status // 100, 1), 5)
        self._counters.values[self._code_slots[env][klass - 1]] += 1
        self.histograms[env].observe(seconds)

    def error(self, env: str, kind: str) -> None:
        self._env(env)
        self._counters.values[self._error_slots[env][kind]] += 1


def upstream_timeout(env: EnvPolicy) -> aiohttp.ClientTimeout:
    """An environment's upstream timeouts: ``connect_s`` to connect, then ``read_s`` of
    silence while a response is awaited or read (504, or a cut body)."""
    return aiohttp.ClientTimeout(
        total=None, sock_connect=env.connect_s, connect=env.connect_s, sock_read=env.read_s
    )


class Forwarder:
    """One per worker: the upstream client session and pools."""

    def __init__(self, counters: Counters) -> None:
        self.stats = UpstreamStats(counters)
        self._pools: dict[tuple[Upstream, ...], UpstreamPool] = {}
        self._session: aiohttp.ClientSession | None = None
        # WebSocket handshakes, one session per (connect_s, read_s) over the same
        # connector: ws_connect() takes no per-request ClientTimeout, only the session's.
        self._ws_sessions: dict[tuple[float, float], aiohttp.ClientSession] = {}

    def _new_session(
        self, connector: aiohttp.BaseConnector, timeout: aiohttp.ClientTimeout, *, owner: bool
    ) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            connector_owner=owner,
            auto_decompress=False,  # bytes pass through as the upstream encoded them
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=timeout,
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # per-host concurrency is the upstream's to limit, not ours
            keepalive_timeout=30,
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
        )
        self._session = self._new_session(connector, aiohttp.ClientTimeout(total=None), owner=True)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Forwarder.start() first"
        return self._session

    async def close(self) -> None:
        for session in self._ws_sessions.values():
            await session.close()  # (not the connector: the main session owns it)
        self._ws_sessions.clear()
        if self._session is not None:
            await self._session.close()

    async def ws_connect(
        self, env: EnvPolicy, target: str, headers: CIMultiDict[str], protocols: Sequence[str]
    ) -> aiohttp.ClientWebSocketResponse | web.Response:
        """The upstream side of a WebSocket, or the gateway's own answer when the handshake
        fails; ``target`` in origin form, as ``forward``'s. The upstreams are tried as for
        any request (``forward``, and the fast engine): in round-robin order, one that
        refuses the connection marked down and counted as a ``connect`` error, then the
        next. The handshake is timed like any forwarded request (``connect_s``, then
        ``read_s`` for the upstream's answer: 504 and a ``timeout`` error); an answer other
        than a valid 101 is a 502 and a ``connect`` error, as is every upstream refusing.
        The client's connection is closed after any of these: what it sent after an
        upgrade request is not a next request."""
        key = (env.connect_s, env.read_s)
        session = self._ws_sessions.get(key)
        if session is None:
            connector = self.session.connector
            assert connector is not None
            session = self._ws_sessions[key] = self._new_session(
                connector, upstream_timeout(env), owner=False
            )
        loop = asyncio.get_running_loop()
        pool = self.pool(env)
        resp = _error(502, "upstream refused the WebSocket")
        for i in pool.order(loop.time()):
            up = pool.upstreams[i]
            scheme = "wss" if up.scheme == "https" else "ws"
            try:
                # (after the 101, ws_receive=None lifts sock_read: the tunnel's idle limit
                # is websocket_idle_s, kept by the caller)
                return await session.ws_connect(
                    f"{scheme}://{up.url.split('://', 1)[1]}{target}",
                    headers=headers,
                    protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    autoping=True,
                )
            except aiohttp.ClientConnectorError:
                pool.mark_down(i, loop.time())
                self.stats.error(env.name, "connect")
                continue  # nothing was sent: the next upstream
            except TimeoutError:  # aiohttp's ServerTimeoutError is one too
                self.stats.error(env.name, "timeout")
                resp = _error(504, "upstream did not answer in time")
                break
            except (aiohttp.ClientError, OSError):
                self.stats.error(env.name, "connect")
                break
        resp.force_close()
        return resp

    def pool(self, env: EnvPolicy) -> UpstreamPool:
        pool = self._pools.get(env.upstreams)
        if pool is None:
            # Keyed by the upstream tuple: a reload that keeps an environment's upstreams
            # keeps its round-robin and down state. Bounded by what configs have named.
            pool = self._pools[env.upstreams] = UpstreamPool(env.upstreams)
        return pool

    async def forward(
        self,
        request: web.BaseRequest,
        env: EnvPolicy,
        headers: CIMultiDict[str],
        target: str,
        extra_response_headers: Iterable[tuple[str, str]],
    ) -> web.StreamResponse:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        timeout = upstream_timeout(env)
        body = None
        limited: LimitedBody | None = None
        if request.body_exists:
            cl = request.content_length
            if cl is not None and cl > env.max_body_bytes:
                raise BodyTooLarge()
            # A client that sent "Expect: 100-continue" waits for this before sending its
            # body: the decision is made, so ask for it now rather than let its timer expire.
            if (
                request.headers.get("Expect", "").lower() == "100-continue"
                and request.transport is not None
            ):
                request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            limited = LimitedBody(request.content, env.max_body_bytes)
            body = limited.chunks()
            if cl is not None:
                headers["Content-Length"] = str(cl)
        pool = self.pool(env)
        started = loop.time()
        for i in pool.order(started):
            up = pool.upstreams[i]
            url = URL(up.url + target, encoded=True)
            try:
                upstream = await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=timeout,
                    chunked=None,
                    compress=None,
                )
            except aiohttp.ClientConnectorError:
                pool.mark_down(i, loop.time())
                self.stats.error(env.name, "connect")
                if body is not None and request.content.total_bytes:
                    break  # part of the body is gone: this request cannot be replayed
                continue
            except (TimeoutError, aiohttp.ServerTimeoutError):
                self.stats.error(env.name, "timeout")
                return _error(504, "upstream did not answer in time")
            except BodyTooLarge:
                raise
            except (aiohttp.ClientError, OSError) as exc:
                if limited is not None and limited.too_large:
                    raise BodyTooLarge() from exc
                if client_body_failed(request):
                    raise ClientBodyError() from exc
                return self._upstream_error(env, exc)
            try:
                return await self._relay(request, upstream, env, started, extra_response_headers)
            finally:
                upstream.release()
        return _error(502, f"no upstream of {env.name!r} accepted the connection")

    def _upstream_error(self, env: EnvPolicy, exc: BaseException) -> web.Response:
        """Translate an upstream failure at the boundary: 504 for time, 502 for the rest."""
        if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
            kind, status, text = "timeout", 504, "upstream did not answer in time"
        elif isinstance(exc, aiohttp.ClientPayloadError):
            kind, status, text = "protocol", 502, "upstream sent a broken response"
        elif isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            kind, status, text = "reset", 502, "upstream closed the connection"
        else:
            kind, status, text = "protocol", 502, "upstream sent an invalid response"
        self.stats.error(env.name, kind)
        return _error(status, text)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        env: EnvPolicy,
        started: float,
        extra: Iterable[tuple[str, str]],
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        search = FORBIDDEN_IN_FIELD.search
        if search(upstream.reason or "") is not None or any(
            search(value.decode("latin-1")) is not None for _, value in upstream.raw_headers
        ):
            return self._upstream_error(env, ValueError("control character in the response head"))
        self.stats.response(env.name, upstream.status, loop.time() - started)
        resp = RelayResponse(
            status=upstream.status,
            reason=upstream.reason,
            has_type="Content-Type" in upstream.headers,
        )
        listed = connection_listed(upstream.raw_headers)
        for raw_name, raw_value in upstream.raw_headers:
            name = raw_name.decode("latin-1")
            lname = name.lower()
            if lname in DROP_RESPONSE or lname in listed:
                continue
            resp.headers.add(name, header_text(raw_value))
        for name, value in extra:
            resp.headers[name] = value
        no_body = request.method == "HEAD" or upstream.status in NO_BODY_STATUS
        cl = upstream.content_length
        if cl is not None and upstream.status not in NO_BODY_STATUS:
            resp.content_length = cl
        elif not no_body and request.version >= aiohttp.HttpVersion11:
            resp.enable_chunked_encoding()
        watch = None
        if not no_body:
            # Set before the first await: the body may break while the head is written.
            conn = upstream.connection
            watch = BodyWatch(upstream.content, conn.protocol if conn is not None else None)
        try:
            await resp.prepare(request)
            if watch is not None:
                try:
                    async for chunk in upstream.content.iter_chunked(STREAM_CHUNK):
                        await resp.write(chunk)
                except (TimeoutError, aiohttp.ClientError, HttpProcessingError) as exc:
                    # Headers are gone already; the only honest signal left is to cut the
                    # connection so the client sees a truncated body, not a complete one.
                    self.stats.error(env.name, body_failure_kind(exc, watch.protocol))
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
        finally:
            if watch is not None:
                watch.done()  # the upstream connection may be pooled and reused
        await resp.write_eof()
        return resp


class BodyWatch:
    """Delivers a refused response body to its reader. aiohttp's llhttp parser drops the
    body's stream before it raises on bytes that break the body's framing (a bad chunk
    size line arriving after the head): the client protocol records the error and closes
    the connection, but the stream neither ends nor fails, and its reader would wait for
    ever (sock_read stops with the connection). When the connection closes with such an
    error recorded and the body unfinished, the body fails with that error."""

    __slots__ = ("closed", "content", "protocol")

    def __init__(self, content: aiohttp.StreamReader, protocol: ResponseHandler | None) -> None:
        self.content = content
        self.protocol = protocol
        self.closed = protocol.closed if protocol is not None else None
        if self.closed is not None:
            self.closed.add_done_callback(self._lost)
        elif protocol is not None:
            self._check()  # (None: the connection is closed already)

    def _lost(self, fut: asyncio.Future[None]) -> None:
        _consume(fut)
        self._check()

    def _check(self) -> None:
        content, protocol = self.content, self.protocol
        if protocol is None or content.is_eof() or content.exception() is not None:
            return
        refused = protocol.exception()
        if isinstance(refused, HttpProcessingError):
            content.set_exception(
                aiohttp.ClientPayloadError(f"upstream body refused: {refused.message}"), refused
            )

    def done(self) -> None:
        closed = self.closed
        if closed is not None:
            closed.remove_done_callback(self._lost)
            # The future stays with the pooled connection and may end with an error that
            # nobody reads ("exception was never retrieved"): one consumer per future.
            closed.remove_done_callback(_consume)
            closed.add_done_callback(_consume)


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def body_failure_kind(exc: BaseException, protocol: ResponseHandler | None) -> str:
    """How a response body that failed after its head is counted, as the fast engine
    counts it: ``timeout`` after read_s of silence; ``protocol`` when the parser refused
    bytes the upstream sent (bad chunk framing, too many or too long trailer fields);
    ``reset`` when the connection ended before the body did (a Content-Length or chunked
    body cut short). aiohttp wraps both of the last two in ClientPayloadError; refused
    bytes are told by the parser error the client protocol recorded, by a parser error
    set on the body as it is (aiohttp's pure-Python parser), or by a cause other than a
    PayloadEncodingError (ContentLengthError, TransferEncodingError: "not enough data",
    what an unfinished body at the end of the connection is wrapped around)."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return "timeout"
    if protocol is not None and isinstance(protocol.exception(), HttpProcessingError):
        return "protocol"
    if isinstance(exc, HttpProcessingError):
        return "protocol"
    cause = exc.__cause__
    if isinstance(cause, HttpProcessingError) and not isinstance(cause, PayloadEncodingError):
        return "protocol"
    return "reset"


class LimitedBody:
    """The client's body, streamed, cut at the limit. aiohttp's client wraps an exception
    raised by a body generator into its own errors, so the overflow is also recorded here
    for forward() to tell "too large" (413) from an upstream failure (502)."""

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self.content, self.limit = content, limit
        self.too_large = False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.content.iter_chunked(STREAM_CHUNK):
            seen += len(chunk)
            if seen > self.limit:
                self.too_large = True
                raise BodyTooLarge()
            yield chunk


def _error(status: int, text: str) -> web.Response:
    return web.Response(
        status=status, text=f"{status} {text}\n", headers={"Cache-Control": "no-store"}
    )


def client_address(
    peer: str,
    xff: str | None,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[str, str]:
    """(client address, X-Forwarded-For to send). A trusted proxy's XFF is kept and the
    peer appended; anyone else's is replaced, so a client cannot forge its address."""
    if trusted and xff:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return peer, peer
        if any(addr in net for net in trusted):
            first = xff.split(",")[0].strip()
            return first or peer, f"{xff}, {peer}"
    return peer, peer


def upstream_headers(
    raw_headers: Sequence[tuple[bytes, bytes]],
    forward_host: str,
    xff: str,
    proto: str,
    request_id: str,
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    listed: set[str] = set()
    for raw_name, value in raw_headers:
        name = raw_name.decode("latin-1")
        lname = name.lower()
        if lname == "connection":
            listed |= connection_tokens(value)
            continue
        # Any name with "_": WSGI servers turn it into "-" and an app reading
        # HTTP_X_FORWARDED_HOST would see the client's value (contract §2).
        if lname in DROP_REQUEST or "_" in lname:
            continue
        headers.add(name, header_text(value))
    for token in listed:
        headers.popall(token, None)
    headers["Host"] = forward_host
    headers["X-Forwarded-For"] = xff
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = forward_host
    headers["X-Request-ID"] = request_id
    return headers
