"""Accepting a connection on a TLS listener, for both engines: the PROXY protocol header
in the clear, then the TLS handshake, then the engine's own protocol.

A load balancer that passes TLS through (AWS NLB, HAProxy ``send-proxy``) sends the PROXY
header before the client's ClientHello, unencrypted, as nginx's ``listen ... ssl
proxy_protocol`` expects. So the listener accepts plain TCP (no ``ssl=`` on the server),
reads the header without reading past it (``proxy_protocol.safe_read``: the bytes after it
are the TLS layer's), then puts the loop's own TLS protocol (uvloop's ``SSLProtocol``, the
one ``create_server(ssl=...)`` uses) on the connection, which makes the engine's protocol
when the handshake is done and hands it the TLS transport, followed by the header's bytes:
the engine parses those and checks them against ``trusted_proxies`` as on a plain
listener. Without a PROXY header the TLS protocol takes the connection at once.

A connection takes its place under ``limits.max_connections`` when it is accepted, not when
its handshake is done: a handshake holds the TLS layer's buffers, and connections left
half-way through one (until the header timeout) must not escape the cap. The slot passes
to the engine's protocol with the connection (released, then taken again by the engine's
own ``admit``, in one step of the loop), or is released when the connection ends first.

Doing the handshake here, rather than inside the server, also lets it be counted: a
handshake the TLS layer refuses (no shared version or cipher, a malformed ClientHello,
the client rejecting the certificate) or that does not finish within the header timeout
is counted as ``gateway_connections_refused_total{reason="tls_handshake"}``. A client
that closes the connection during the handshake is not: load balancers' TCP health
checks do exactly that.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import uvloop

from gateway import proxy_protocol

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway")


def _tls_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's own TLS protocol: uvloop's (C) under uvloop, asyncio's otherwise. Both
    take (loop, app_protocol, context, waiter, server_side, server_hostname,
    call_connection_made, ssl_handshake_timeout)."""
    if isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    from asyncio import sslproto

    return sslproto.SSLProtocol


class TLSListener:
    """What a TLS listener's accepted connections share; the server's protocol factory."""

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        ctx: ssl.SSLContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.ctx = ctx
        self.app_factory = app_factory

    def __call__(self) -> TLSAcceptor:
        return TLSAcceptor(self)

    def refused(self, reason: str) -> None:
        self.runtime.refused_connection(self.name, reason)


class _Start(asyncio.Protocol):
    """The TLS layer's application protocol until the handshake is done: then it makes the
    engine's protocol, gives it the TLS transport and the PROXY header's bytes, and steps
    aside (the TLS layer calls the engine's protocol directly from then on)."""

    def __init__(self, acceptor: TLSAcceptor) -> None:
        self.acceptor = acceptor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        acceptor = self.acceptor
        lst = acceptor.listener
        header = acceptor.header
        tls = cast(asyncio.Transport, transport)
        # The acceptor's slot goes to the engine's protocol, whose connection_made takes
        # it again (Runtime.admit), or refuses the connection, as on a plain listener.
        acceptor.release()
        if lst.runtime.snapshot.listeners[lst.name].proxy_protocol != bool(header):
            # A reload turned the listener's proxy_protocol over during the handshake: the
            # engine would read this connection's first bytes the other way. Rare; the
            # client reconnects.
            tls.abort()
            return
        app = lst.app_factory()
        tls.set_protocol(app)
        app.connection_made(tls)
        if header and not tls.is_closing():  # (closing: refused by the connection cap)
            cast(asyncio.Protocol, app).data_received(header)


class TLSAcceptor(asyncio.BufferedProtocol):
    """One accepted connection until the TLS layer takes it over."""

    def __init__(self, listener: TLSListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.header = b""
        self.piece = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.admitted = False  # holds a slot under max_connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        lst = self.listener
        if not lst.runtime.admit(lst.name):
            # Over the cap (counted as connection_limit): an RST, as on a plain listener.
            cast(asyncio.Transport, transport).abort()
            return
        self.admitted = True
        self.transport = cast(asyncio.Transport, transport)
        snap = lst.runtime.snapshot
        if snap.listeners[lst.name].proxy_protocol:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(snap.config.timeouts.header_s, self._header_timeout)
        else:
            # Before the loop starts reading (it does once this returns): the TLS layer
            # reads the ClientHello itself.
            self._start_tls()

    # -- the PROXY header, in the clear --------------------------------------------------

    def get_buffer(self, sizehint: int) -> bytearray:
        # Never more than the header may still hold: what follows it stays in the socket.
        self.piece = bytearray(proxy_protocol.safe_read(self.header))
        return self.piece

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.header += bytes(self.piece[:nbytes])
        try:
            parsed = proxy_protocol.parse(self.header)
        except proxy_protocol.ProxyProtocolError as exc:
            self.listener.refused("proxy_protocol")
            log.info("closing connection: %s", exc)
            self._close()
            return
        if parsed is not None:
            self._cancel_timer()
            # As loop.start_tls: reading paused while the protocols change hands.
            transport = self.transport
            transport.pause_reading()
            self._start_tls()
            asyncio.get_running_loop().call_soon(transport.resume_reading)

    def eof_received(self) -> bool:
        return False  # closed before its header: nothing to answer

    def connection_lost(self, exc: Exception | None) -> None:
        # Only before the TLS layer took the connection (it is its protocol since).
        self._cancel_timer()
        self.transport = None
        self.release()

    def release(self) -> None:
        """Give back the slot under max_connections, once, whoever asks first: the
        handshake's end hands it to the engine's protocol (_Start), every other end
        returns it."""
        if self.admitted:
            self.admitted = False
            self.listener.runtime.release(self.listener.name)

    def _header_timeout(self) -> None:
        self.timer = None
        self.listener.refused("header_timeout")  # as on a plain PROXY listener
        self._close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- the handshake -------------------------------------------------------------------

    def _start_tls(self) -> None:
        transport = self.transport
        assert transport is not None
        lst = self.listener
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        tls = _tls_protocol_class(loop)(
            loop,
            _Start(self),
            lst.ctx,
            waiter,
            True,  # server side
            None,
            call_connection_made=True,
            ssl_handshake_timeout=lst.runtime.snapshot.config.timeouts.header_s,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        self.transport = None  # the TLS layer's now

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        self.release()  # the handshake failed or the client left (else _Start did already)
        if waiter.cancelled():
            return
        exc = waiter.exception()
        if exc is None:
            return
        lst = self.listener
        if isinstance(exc, ssl.SSLError) or (
            # the TLS layer's handshake timeout (ours: timeouts.header_s)
            isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc)
        ):
            lst.refused("tls_handshake")
            log.debug("TLS handshake failed on listener %s: %s", lst.name, exc)
        else:
            # The client went away during the handshake (a TCP health check): not counted.
            log.debug("client left during the TLS handshake on %s: %r", lst.name, exc)
