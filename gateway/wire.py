"""HTTP/1.1 details both engines share, so that they cannot drift apart."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp.http_parser as _py_parser

from gateway.config import Bind
from gateway.tls_accept import TLSListener

if TYPE_CHECKING:
    from gateway.runtime import Runtime

# A refused request's body is drained up to this much so the connection can be kept;
# beyond it the connection is closed (the body is never parsed as a next request).
DISCARD_LIMIT = 64 * 1024
# Attribute the SSLContext's sni_callback sets on the SSL object (tls.py).
SNI_ATTR = "gateway_sni"

# aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1) accepts chunk sizes of any length;
# llhttp refuses those that overflow 64 bits (RFC 9112 §7.1: guard against overflow), and a
# front proxy that wraps them would desynchronise from us. Bound them the same way.
_py_parser.HEXDIGITS = re.compile(rb"[0-9a-fA-F]{1,16}")  # type: ignore[misc]


def host_part(forward_host: str) -> str:
    """``www.acme.com:8443`` -> ``www.acme.com``; ``[::1]:80`` -> ``[::1]``."""
    if forward_host.startswith("["):
        return forward_host[: forward_host.index("]") + 1]
    return forward_host.partition(":")[0]


def printable(value: str) -> str:
    """Header values are decoded with surrogateescape: bytes that are not UTF-8 become lone
    surrogates, which no JSON encoder accepts. Keep them visible as \\xNN escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def sni_matches(sni: str | None, forward_host: str) -> bool:
    """Strict SNI (Traefik, Caddy): the TLS server name must be the Host's host, so a
    certificate for one name cannot carry requests for another."""
    host = host_part(forward_host)
    if sni is None:
        # Clients send no SNI when they connect to an IP literal (RFC 6066 §3).
        return host[:1] == "[" or host.replace(".", "").isdigit()
    return sni.rstrip(".").lower() == host


def origin_form(target: str) -> str:
    """The request-target to send upstream: absolute-form becomes origin form
    (RFC 9112 §3.2.2)."""
    if target[:1] == "/":
        return target
    if target == "*":
        return "*"
    _, _, rest = target.partition("://")
    slash = rest.find("/")
    query = rest.find("?")
    if slash == -1 or (query != -1 and query < slash):
        return "/" + (rest[query:] if query != -1 else "")
    return rest[slash:]


async def open_listener(
    factory: Callable[[], asyncio.BaseProtocol],
    bind: Bind,
    ctx: ssl.SSLContext | None,
    sock: socket.socket | None,
    name: str,
    runtime: Runtime,
) -> tuple[asyncio.AbstractServer, tuple[str, int]]:
    """Listen for one listener: on the socket a supervisor handed down, or on its bind.
    Returns the server and the address it really listens on (port 0 in tests). A TLS
    listener accepts plain TCP and does the handshake itself (tls_accept: the PROXY
    header comes before it, and a failed handshake is counted)."""
    loop = asyncio.get_running_loop()
    if ctx is not None:
        factory = TLSListener(name, runtime, ctx, factory)
    if sock is not None:
        srv = await loop.create_server(factory, sock=sock, backlog=1024)
    else:
        srv = await loop.create_server(
            factory, bind.host, bind.port, backlog=1024, reuse_address=True
        )
    sockname = srv.sockets[0].getsockname()
    return srv, (sockname[0], sockname[1])
