"""The aiohttp engine: aiohttp's low-level ``web.Server`` per listener, decisions from the
sans-IO core, allowed requests streamed to the upstreams by ``proxy.Forwarder``.

It is the reference engine: a faster one may sit beside it behind the same small
interface (``start`` / ``close_listeners`` / ``shutdown``), and both must pass the same
end-to-end tests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any, cast

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from yarl import URL

from gateway import proxy_protocol
from gateway.accesslog import AccessLog
from gateway.config import Bind
from gateway.policy import Decision, EnvPolicy
from gateway.proxy import BodyTooLarge, ClientBodyError, Forwarder, client_address, upstream_headers
from gateway.responses import new_request_id, refusal_text
from gateway.runtime import Runtime, logged_fields
from gateway.wire import (
    DISCARD_LIMIT,
    SNI_ATTR,
    open_listener,
    origin_form,
    sni_matches,
)

log = logging.getLogger("gateway.server")


class ListenerEngine:
    """Serves one listener: decides, refuses or forwards."""

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        forwarder: Forwarder,
        access_log: AccessLog | None = None,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.forwarder = forwarder
        self.access_log = access_log

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime
        snap = rt.snapshot  # read once: this request is decided by this config only
        lp = snap.listeners[self.name]
        msg = request._message
        target = msg.path
        if lp.health_path is not None and target == lp.health_path:
            return _health(rt)
        if msg.version[0] > 1:
            # "HTTP/2.0" in a request line is not HTTP/2; nginx answers 505 too.
            decision, forward_host = lp.version_refusal, ""
        else:
            decision, forward_host = lp.decide(msg.headers.getall("Host", ()), msg.method, target)
        if (
            lp.tls
            and forward_host
            and not sni_matches(getattr(request.protocol, "sni", None), forward_host)
        ):
            decision = lp.refusals["sni_mismatch"]
        counters = rt.counters.values
        counters[decision.slot] += 1
        if decision.disagreement_slot >= 0:
            counters[decision.disagreement_slot] += 1
        request_id = new_request_id()
        if decision.action == "refuse" or decision.would_block:
            self._note_refusal(
                request, decision, msg.headers.getall("Host", ()), request_id, snap.short_sha
            )
        if decision.action == "refuse":
            resp = self._refuse(request, decision, request_id, snap.short_sha)
            if self.access_log is not None:
                self._access(request, decision, resp.status, request_id, snap.short_sha, None, 0.0)
            return resp
        env = decision.env
        assert env is not None
        protocol = request.protocol
        peer_ip = getattr(protocol, "client_addr", None) or _peer(request)
        _client, xff = client_address(
            peer_ip, msg.headers.get("X-Forwarded-For"), snap.loaded.trusted_proxies
        )
        headers = upstream_headers(
            msg.raw_headers, forward_host, xff, "https" if lp.tls else "http", request_id
        )
        extra: list[tuple[str, str]] = [("X-Request-ID", request_id)]
        if snap.config.expose_config_version:
            extra.append(("X-Gateway-Config", snap.short_sha))
        started = time.monotonic()
        rt.in_flight[self.name] = rt.in_flight.get(self.name, 0) + 1
        status = 0
        try:
            if msg.upgrade and request.headers.get("Upgrade", "").lower() == "websocket":
                resp = await self._websocket(
                    request, env, headers, target, snap.config.timeouts.websocket_idle_s
                )
            else:
                resp = await self.forwarder.forward(
                    request, env, headers, origin_form(target), extra
                )
            status = resp.status
            return resp
        except (ClientBodyError, BodyTooLarge) as exc:
            # Refused after the decision, for its body: counted once, as refused.
            broken = isinstance(exc, ClientBodyError)
            refusal = lp.refusals["bad_request" if broken else "body_too_large"]
            counters[refusal.slot] += 1
            counters[decision.slot] -= 1
            decision = refusal  # and logged as refused (the fast engine's body_broken)
            resp = self._refuse(request, refusal, request_id, snap.short_sha)
            if broken and isinstance(request.protocol, _Handler):
                resp.force_close()
                request.protocol.close_after_response()
            status = resp.status
            return resp
        finally:
            rt.in_flight[self.name] -= 1
            if self.access_log is not None:
                self._access(
                    request, decision, status, request_id, snap.short_sha, env.name,
                    time.monotonic() - started,
                )  # fmt: skip

    def _note_refusal(
        self,
        request: web.BaseRequest,
        decision: Decision,
        host_values: Any,
        request_id: str,
        sha: str,
    ) -> None:
        """Top blocked hosts and the rate-limited refusal log (would-block ones too)."""
        rt = self.runtime
        rt.note_blocked(host_values, decision)
        host, reason = logged_fields(host_values, decision)
        rt.refusal_log.record(
            "would block (report mode)" if decision.would_block else "refused",
            {
                "request_id": request_id,
                "listener": self.name,
                "environment": decision.environment,
                "reason": reason,
                "host": host,
                "client": getattr(request.protocol, "client_addr", None) or _peer(request),
                "config": sha,
            },
        )

    def _access(
        self,
        request: web.BaseRequest,
        decision: Decision,
        status: int,
        request_id: str,
        sha: str,
        upstream: str | None,
        duration: float,
    ) -> None:
        assert self.access_log is not None
        self.access_log.write(
            {
                "time": time.time(),
                "request_id": request_id,
                "client": getattr(request.protocol, "client_addr", None) or _peer(request),
                "listener": self.name,
                "environment": decision.environment,
                "decision": "allowed" if decision.action == "forward" else "blocked",
                "reason": decision.label,
                "status": status,
                "method": request.method,
                "upstream": upstream,
                "duration_s": round(duration, 6),
                "config": sha,
            }
        )

    async def _websocket(
        self,
        request: web.BaseRequest,
        env: EnvPolicy,
        headers: Any,
        target: str,
        idle_s: float,
    ) -> web.StreamResponse:
        """Proxy a WebSocket both ways, message by message, closing it after ``idle_s``
        without traffic in either direction."""
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.popall(name, None)
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        headers.popall("Sec-WebSocket-Protocol", None)
        upstream = await self.forwarder.ws_connect(env, origin_form(target), headers, protocols)
        if isinstance(upstream, web.Response):
            return upstream  # the handshake failed: the gateway's own 502 or 504
        ws = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await ws.prepare(request)
        self.forwarder.stats.response(env.name, 101, 0.0)
        loop = asyncio.get_running_loop()
        last = [loop.time()]

        async def pump(src: Any, dst: Any) -> None:
            async for m in src:
                last[0] = loop.time()
                if m.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(m.data)
                elif m.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(m.data)
                else:
                    break

        async def idle() -> None:
            while True:
                await asyncio.sleep(min(idle_s, 1.0))
                if loop.time() - last[0] > idle_s:
                    return

        tasks = [
            asyncio.ensure_future(pump(ws, upstream)),
            asyncio.ensure_future(pump(upstream, ws)),
            asyncio.ensure_future(idle()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            await ws.close()
        return ws

    def _refuse(
        self, request: web.BaseRequest, decision: Decision, request_id: str, short_sha: str
    ) -> web.StreamResponse:
        if decision.status == 0:
            # blocked_response "close": drop the connection unanswered, like nginx's 444.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("blocked_response close")
        resp = web.Response(
            status=decision.status,
            text=refusal_text(decision.label, request_id, decision.body),
            headers={
                "Cache-Control": "no-store",
                "X-Request-ID": request_id,
                "X-Gateway-Config": short_sha,
            },
        )
        if request.body_exists:
            cl = request.content_length
            if cl is None or cl > DISCARD_LIMIT or decision.label == "body_too_large":
                resp.force_close()
        return resp

    def parser_refusal(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> web.Response:
        """A request aiohttp's parser refused before any handler ran. Counted like any
        other refusal, so allowed + blocked equals requests received."""
        rt = self.runtime
        lp = rt.snapshot.listeners[self.name]
        if status == 500:
            log.error("internal error in handler", exc_info=exc)
            resp = web.Response(status=502, text="502 gateway error\n")
            resp.force_close()
            return resp
        text = str(getattr(exc, "message", "") or exc or "").lower()
        # aiohttp's parser refuses these two Host errors itself; they keep their own reason
        # so "allowed + blocked = received" holds per reason too.
        if text.startswith("duplicate 'host'"):
            reason = "duplicate_host"
        elif text.startswith("missing 'host'"):
            reason = "missing_host"
        else:
            reason = "bad_request"
        decision = lp.refusals[reason]
        rt.counters.values[decision.slot] += 1
        request_id = new_request_id()
        resp = web.Response(
            status=400,
            text=refusal_text(reason, request_id),
            headers={
                "Cache-Control": "no-store",
                "X-Request-ID": request_id,
                "X-Gateway-Config": rt.snapshot.short_sha,
            },
        )
        resp.force_close()
        return resp


def _peer(request: web.BaseRequest) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if isinstance(peer, tuple) else "unknown"


def _health(rt: Runtime) -> web.Response:
    if rt.ready:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})
    return web.Response(status=503, text="draining\n", headers={"Cache-Control": "no-store"})


class _Handler(RequestHandler):
    """aiohttp's connection protocol plus what it lacks for an edge server: a deadline for
    the request headers (slowloris), a connection cap, PROXY protocol, the TLS SNI name."""

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._engine = manager.engine
        self._accepted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._handled = 0
        self._proxy_buf: bytearray | None = None
        self.client_addr: str | None = None
        self.sni: str | None = None

    # -- connection lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        engine = self._engine
        rt = engine.runtime
        snap = rt.snapshot
        if not rt.admit(engine.name):
            # Refused at once: an RST costs the client nothing and frees the slot now.
            cast(asyncio.Transport, transport).abort()
            return
        self._accepted = True
        super().connection_made(transport)
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None:
            self.sni = getattr(ssl_obj, SNI_ATTR, None)
        if snap.listeners[engine.name].proxy_protocol:
            self._proxy_buf = bytearray()
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._accepted:
            return
        self._accepted = False
        self._disarm()
        self._engine.runtime.connections_open[self._engine.name] -= 1
        super().connection_lost(exc)

    # -- header deadline ------------------------------------------------------------------

    def _arm(self) -> None:
        if self._deadline is None:
            timeout = self._engine.runtime.snapshot.config.timeouts.header_s
            self._deadline = self._loop.call_later(timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        self._engine.runtime.refused_connection(self._engine.name, "header_timeout")
        if self.transport is not None:
            self.transport.abort()

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self._handled += 1

    def data_received(self, data: bytes) -> None:
        if self._proxy_buf is not None:
            data = self._proxy_header(data)
            if not data:
                return
        before = self._request_count
        queued = len(self._messages)
        end = data.find(b"\r\n\r\n")
        if end != -1 and end + 4 < len(data) and self._payload_parser is None:
            self._feed_pieces(data)
        else:
            super().data_received(data)
        if len(self._messages) > queued and isinstance(self._messages[-1][0], _ErrInfo):
            self._fail_streaming_body(self._messages[-1][0])
        if self._request_count != before:
            self._disarm()  # a whole header block arrived
        elif self._handled >= self._request_count and not self._upgraded:
            # Idle keep-alive connection receiving the start of its next request: the
            # clock for its headers starts now (nginx client_header_timeout).
            self._arm()

    def close_after_response(self) -> None:
        """With the response's force_close(): close once it is written, without lingering
        to drain the rest of a broken body (aiohttp would read it and log the parse error
        again). This connection is closing anyway, so its lingering time can go."""
        self._lingering_time = 0.0

    def _fail_streaming_body(self, err: _ErrInfo) -> None:
        """The parser failed inside the body of a request already being forwarded (a bad
        chunk in a later read). aiohttp queues the error as a next message and leaves the
        body waiting forever; end the body with the error so the forward stops and answers
        400 (proxy.ClientBodyError)."""
        current = self._current_request
        if current is not None and current.body_exists and not current.content.is_eof():
            current.content.set_exception(err.exc or ValueError(err.message))

    def _feed_pieces(self, data: bytes) -> None:
        """Pipelined requests arriving in one read: aiohttp's data_received drops every
        message of a read whose parse fails, so a bad second request would take the good
        first one with it, unanswered. Feeding the read in pieces that end at header
        boundaries keeps the good ones; after a refused piece, nothing more is parsed (the
        refusal closes the connection)."""
        start = 0
        while start < len(data):
            end = data.find(b"\r\n\r\n", start)
            stop = len(data) if end == -1 else end + 4
            head = data[start:stop].lower()
            if head.find(b"content-length") >= 0 or head.find(b"transfer-encoding") >= 0:
                # A request with a body: its body errors must refuse it before dispatch,
                # as when parsed in one go. Only bodiless requests are split off.
                stop = len(data)
            super().data_received(data[start:stop])
            if (
                self._force_close
                or self._close
                or (self._messages and isinstance(self._messages[-1][0], _ErrInfo))
            ):
                return
            start = stop

    def _proxy_header(self, data: bytes) -> bytes:
        assert self._proxy_buf is not None
        self._proxy_buf += data
        try:
            header = proxy_protocol.parse(bytes(self._proxy_buf))
        except proxy_protocol.ProxyProtocolError as exc:
            self._engine.runtime.refused_connection(self._engine.name, "proxy_protocol")
            log.info("closing connection: %s", exc)
            self._proxy_buf = None
            if self.transport is not None:
                self.transport.abort()
            return b""
        if header is None:
            return b""
        rest = bytes(self._proxy_buf[header.consumed :])
        self._proxy_buf = None
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if header.client is not None and isinstance(peer, tuple) and self._trusted(peer[0]):
            self.client_addr = header.client
        return rest

    def _trusted(self, peer: str) -> bool:
        import ipaddress

        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self._engine.runtime.snapshot.loaded.trusted_proxies)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        return self._engine.parser_refusal(request, status, exc)


class _Server(web.Server):
    def __init__(self, engine: ListenerEngine, **kwargs: Any) -> None:
        super().__init__(engine.handle, **kwargs)
        self.engine = engine

    def _make_request(self, message: Any, *args: Any, **kwargs: Any) -> web.BaseRequest:
        try:
            return super()._make_request(message, *args, **kwargs)
        except ValueError:
            # yarl fails on some absolute-form targets (an undecodable xn-- label) inside
            # BaseRequest(); that would kill the connection's task and leave the socket
            # hanging. The decision reads the raw target (message.path) only, so a neutral
            # URL lets the request reach it and be refused like any other.
            safe = message._replace(url=URL.build(path="/"))
            return super()._make_request(safe, *args, **kwargs)

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


def sni_recorder(ctx: ssl.SSLContext) -> None:
    """Keep the client's SNI name on the SSL object, for the Host check."""

    def callback(
        obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        setattr(obj, SNI_ATTR, name.lower() if name else None)

    ctx.sni_callback = callback


class AiohttpEngine:
    name = "aiohttp"

    def __init__(self, runtime: Runtime, access_log: AccessLog | None = None) -> None:
        self.runtime = runtime
        self.access_log = access_log
        self.forwarder = Forwarder(runtime.counters)
        self._servers: dict[str, _Server] = {}
        self._listening: list[asyncio.AbstractServer] = []
        self.addresses: dict[str, tuple[str, int]] = {}

    async def start(
        self,
        binds: dict[str, Bind],
        ssl_contexts: dict[str, ssl.SSLContext] | None = None,
        sockets: dict[str, socket.socket] | None = None,
    ) -> None:
        await self.forwarder.start()
        cfg = self.runtime.snapshot.config
        for name, bind in binds.items():
            engine = ListenerEngine(name, self.runtime, self.forwarder, self.access_log)
            server = _Server(
                engine,
                keepalive_timeout=cfg.timeouts.keepalive_s,
                max_line_size=cfg.limits.max_header_bytes,
                max_field_size=cfg.limits.max_header_bytes,
                max_headers=cfg.limits.max_headers,
                lingering_time=2.0,
                access_log=None,
                auto_decompress=False,
            )
            self._servers[name] = server
            srv, self.addresses[name] = await open_listener(
                server,
                bind,
                (ssl_contexts or {}).get(name),
                (sockets or {}).get(name),
                name,
                self.runtime,
            )
            self._listening.append(srv)
        self.runtime.listeners_up = True

    async def close_listeners(self) -> None:
        # Closing the listening sockets refuses new connections at once; the connections
        # already accepted keep going until shutdown().
        for srv in self._listening:
            srv.close()
        self._listening.clear()

    async def shutdown(self, timeout: float) -> None:
        """Let in-flight requests finish within ``timeout``, then close what is left."""
        await asyncio.gather(*(s.shutdown(timeout) for s in self._servers.values()))
        await self.forwarder.close()
