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
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.config import Bind
from gateway.policy import Decision, ListenerPolicy
from gateway.proxy import BodyTooLarge, Forwarder, client_address, upstream_headers
from gateway.responses import new_request_id, refusal_text
from gateway.runtime import Runtime

log = logging.getLogger("gateway.server")
# A refused request's body is drained up to this much so the connection can be kept;
# beyond it the connection is closed (the body is never parsed as a next request).
DISCARD_LIMIT = 64 * 1024


class ListenerEngine:
    """Serves one listener: decides, refuses or forwards."""

    def __init__(self, name: str, runtime: Runtime, forwarder: Forwarder) -> None:
        self.name = name
        self.runtime = runtime
        self.forwarder = forwarder

    def policy(self) -> ListenerPolicy:
        return self.runtime.snapshot.listeners[self.name]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime
        snap = rt.snapshot  # read once: this request is decided by this config only
        lp = snap.listeners[self.name]
        msg = request._message
        target = msg.path
        if lp.health_path is not None and target == lp.health_path:
            return _health(rt)
        decision, forward_host = lp.decide(msg.headers.getall("Host", ()), msg.method, target)
        counters = rt.counters.values
        counters[decision.slot] += 1
        if decision.disagreement_slot >= 0:
            counters[decision.disagreement_slot] += 1
        request_id = new_request_id()
        if decision.action == "refuse":
            return self._refuse(request, decision, request_id, snap.short_sha)
        env = decision.env
        assert env is not None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = peer[0] if isinstance(peer, tuple) else "unknown"
        _client, xff = client_address(
            peer_ip, msg.headers.get("X-Forwarded-For"), snap.loaded.trusted_proxies
        )
        headers = upstream_headers(
            msg.raw_headers, forward_host, xff, "https" if lp.tls else "http", request_id
        )
        extra: list[tuple[str, str]] = [("X-Request-ID", request_id)]
        if snap.config.expose_config_version:
            extra.append(("X-Gateway-Config", snap.short_sha))
        rt.in_flight[self.name] = rt.in_flight.get(self.name, 0) + 1
        try:
            return await self.forwarder.forward(request, env, headers, _origin_form(target), extra)
        except BodyTooLarge:
            counters[lp.refusals["body_too_large"].slot] += 1
            counters[decision.slot] -= 1  # counted once: as refused, not as allowed
            return self._refuse(request, lp.refusals["body_too_large"], request_id, snap.short_sha)
        finally:
            rt.in_flight[self.name] -= 1

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


def _origin_form(target: str) -> str:
    if target[:1] == "/":
        return target
    if target == "*":
        return "*"
    # Absolute-form: forwarded in origin form (RFC 9112 §3.2.2).
    _, _, rest = target.partition("://")
    slash = rest.find("/")
    query = rest.find("?")
    if slash == -1 or (query != -1 and query < slash):
        return "/" + (rest[query:] if query != -1 else "")
    return rest[slash:]


def _health(rt: Runtime) -> web.Response:
    if rt.ready:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})
    return web.Response(status=503, text="draining\n", headers={"Cache-Control": "no-store"})


class _Handler(RequestHandler):
    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._engine = manager.engine

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        rt = self._engine.runtime
        rt.connections_open[self._engine.name] = rt.connections_open.get(self._engine.name, 0) + 1

    def connection_lost(self, exc: BaseException | None) -> None:
        rt = self._engine.runtime
        rt.connections_open[self._engine.name] -= 1
        super().connection_lost(exc)

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

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class AiohttpEngine:
    name = "aiohttp"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
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
        loop = asyncio.get_running_loop()
        cfg = self.runtime.snapshot.config
        for name, bind in binds.items():
            engine = ListenerEngine(name, self.runtime, self.forwarder)
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
            ctx = (ssl_contexts or {}).get(name)
            if sockets and name in sockets:
                srv = await loop.create_server(server, sock=sockets[name], ssl=ctx, backlog=1024)
            else:
                srv = await loop.create_server(
                    server, bind.host, bind.port, ssl=ctx, backlog=1024, reuse_address=True
                )
            self._listening.append(srv)
            sockname = srv.sockets[0].getsockname()
            self.addresses[name] = (sockname[0], sockname[1])
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
