"""A bare sketch of the gateway's hot path: what Python can do with no framework at all.

A uvloop `asyncio.Protocol` feeds each connection's bytes to aiohttp's C request parser
(`aiohttp.http_parser.HttpRequestParser`, llhttp underneath), checks the Host header
against a set, and:

- refuses unknown hosts with one prebuilt 503 (a single `transport.write`);
- forwards allowed ones over ONE keep-alive upstream connection per client connection:
  the request head is rebuilt (hop-by-hop headers dropped, Host normalised,
  X-Forwarded-For/-Proto set), and upstream responses, framed by Content-Length, are
  relayed verbatim in request order.

It is a ceiling for a Python gateway, not a gateway: no bodies (a request with one is
answered and the connection closed), no chunked upstream responses, no timeouts, no
flow control, no metrics. benchmarking.md measured ~56k req/s refused and ~31k forwarding
on one core.

``--parser httptools`` swaps aiohttp's parser for httptools' (the same llhttp, reporting to
callbacks, no message objects): the ``bare-httptools`` system of ``bench.harness``, which
shows what the parser issue 8 asks for costs. Not a gateway's parser as it stands: it skips
aiohttp's checks on top of llhttp (field limits, duplicate singletons, Host required, the
request-target's form).

    python -m bench.bare_protocol --listen 127.0.0.1:PORT --upstream 127.0.0.1:UPORT \
        --allow allowed.example --allow bench.example [--parser httptools]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools
import uvloop
from aiohttp import hdrs
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD


def _response(status: str, body: bytes, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("ascii") + body


REFUSED = _response("503 Service Unavailable", b"Host header does not match\n")
REFUSED_CLOSE = _response("503 Service Unavailable", b"Host header does not match\n", True)
BAD_REQUEST = _response("400 Bad Request", b"Bad request\n", True)
BAD_GATEWAY = _response("502 Bad Gateway", b"Bad gateway\n", True)
NOT_IMPLEMENTED = _response("501 Not Implemented", b"The sketch forwards no bodies\n", True)

# Request headers never forwarded: hop-by-hop ones, and those the sketch sets itself.
_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)


@dataclass(frozen=True)
class Config:
    allowed: frozenset[str]
    upstream_host: str | None
    upstream_port: int


def normalise_host(value: str) -> str:
    """Lowercase, port dropped, one trailing dot dropped (enough for the sketch)."""
    value = value.lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    host = value.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


class _Slot:
    """One response owed to the client, in request order (pipelining keeps order)."""

    __slots__ = ("close", "data")

    def __init__(self, data: bytes | None, close: bool) -> None:
        self.data = data
        self.close = close


class ClientSide(asyncio.Protocol):
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self._config = config
        self._loop = loop
        # The protocol argument only serves request bodies' StreamReaders (flow control);
        # the sketch closes on any body, so a detached BaseProtocol is enough.
        self._parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        self._transport: asyncio.Transport | None = None
        self._slots: deque[_Slot] = deque()
        self._waiting: deque[_Slot] = deque()  # slots whose upstream response is due
        self._upstream: UpstreamSide | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._peer = b"127.0.0.1"
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = str(peer[0]).encode("ascii")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            messages, upgraded, _tail = self._parser.feed_data(data)
        except Exception:
            # Anything llhttp refuses ends the connection (contract §2).
            self._answer(BAD_REQUEST, close=True)
            return
        for msg, payload in messages:
            if self._closing:
                return
            host = msg.headers.get(hdrs.HOST)
            norm = normalise_host(host) if host is not None else ""
            has_body = payload is not EMPTY_PAYLOAD
            if norm not in self._config.allowed:
                # A refused request's body is never parsed as a next request: close.
                close = msg.should_close or has_body
                self._answer(REFUSED_CLOSE if close else REFUSED, close)
            elif has_body or upgraded:
                self._answer(NOT_IMPLEMENTED, close=True)
            else:
                self._forward(self._request_head(msg, norm), msg.should_close)

    def _request_head(self, msg: object, host: str) -> bytes:
        method: str = msg.method  # type: ignore[attr-defined]
        path: str = msg.path  # type: ignore[attr-defined]
        raw_headers: tuple[tuple[bytes, bytes], ...] = msg.raw_headers  # type: ignore[attr-defined]
        parts = [f"{method} ".encode("ascii"), path.encode("utf-8", "surrogateescape")]
        parts.append(b" HTTP/1.1\r\nHost: ")
        parts.append(host.encode("ascii", "replace"))
        parts.append(b"\r\n")
        for name, value in raw_headers:
            if name.lower() not in _DROP:
                parts += (name, b": ", value, b"\r\n")
        parts += (b"X-Forwarded-For: ", self._peer, b"\r\nX-Forwarded-Proto: http\r\n\r\n")
        return b"".join(parts)

    # Responses, in order.

    def _answer(self, data: bytes, close: bool) -> None:
        if not self._slots and self._transport is not None:
            # Fast path: nothing owed before this one.
            self._transport.write(data)
            if close:
                self._close()
            return
        self._slots.append(_Slot(data, close))

    def _flush(self) -> None:
        transport = self._transport
        while self._slots and self._slots[0].data is not None and transport is not None:
            slot = self._slots.popleft()
            assert slot.data is not None
            transport.write(slot.data)
            if slot.close:
                self._close()
                return

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # Upstream.

    def _forward(self, head: bytes, close: bool) -> None:
        config = self._config
        if config.upstream_host is None:
            self._answer(BAD_GATEWAY, close=True)
            return
        slot = _Slot(None, close)
        self._slots.append(slot)
        self._waiting.append(slot)
        if self._upstream is None:
            self._upstream = UpstreamSide(self)
            self._connecting = self._loop.create_task(self._connect(self._upstream))
        self._upstream.send(head)

    async def _connect(self, upstream: UpstreamSide) -> None:
        config = self._config
        assert config.upstream_host is not None
        try:
            await self._loop.create_connection(
                lambda: upstream, config.upstream_host, config.upstream_port
            )
        except OSError:
            self.upstream_failed(upstream)

    def upstream_response(self, data: bytes) -> None:
        if not self._waiting:
            return  # an unsolicited response: ignore
        self._waiting.popleft().data = data
        self._flush()

    def upstream_failed(self, upstream: UpstreamSide) -> None:
        if upstream is self._upstream:
            self._upstream = None
        while self._waiting:
            slot = self._waiting.popleft()
            slot.data, slot.close = BAD_GATEWAY, True
        self._flush()


class _Request:
    """What ClientSide reads of aiohttp's RawRequestMessage, collected from httptools."""

    __slots__ = ("host", "method", "path", "raw_headers", "should_close")

    def __init__(self) -> None:
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.host: str | None = None
        self.path = ""
        self.method = ""
        self.should_close = False


class HttptoolsClientSide(ClientSide):
    """ClientSide on httptools' request parser: llhttp's callbacks fill a _Request."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config, loop)
        self._tparser = httptools.HttpRequestParser(self)
        self._req = _Request()
        self._done: list[tuple[_Request, bool]] = []

    def on_url(self, url: bytes) -> None:
        self._req.path += url.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._req.raw_headers.append((name, value))
        if len(name) == 4 and name.lower() == b"host":
            self._req.host = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        req = self._req
        req.method = self._tparser.get_method().decode("ascii")
        req.should_close = not self._tparser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._done.append((self._req, True))  # the sketch forwards no bodies

    def on_message_complete(self) -> None:
        req = self._req
        if not self._done or self._done[-1][0] is not req:
            self._done.append((req, False))
        self._req = _Request()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._tparser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer(NOT_IMPLEMENTED, close=True)
            return
        except httptools.HttpParserError:
            self._answer(BAD_REQUEST, close=True)
            return
        done, self._done = self._done, []
        for req, has_body in done:
            if self._closing:
                return
            norm = normalise_host(req.host) if req.host is not None else ""
            if norm not in self._config.allowed:
                close = req.should_close or has_body
                self._answer(REFUSED_CLOSE if close else REFUSED, close)
            elif has_body:
                self._answer(NOT_IMPLEMENTED, close=True)
            else:
                self._forward(self._request_head(req, norm), req.should_close)


class UpstreamSide(asyncio.Protocol):
    """The client connection's own upstream connection; frames responses by
    Content-Length (the upstreams in the benchmark send small fixed bodies)."""

    def __init__(self, client: ClientSide) -> None:
        self._client = client
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._buf = bytearray()
        self._head_len = -1
        self._body_len = 0
        self._closed = False

    def send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)
        else:
            self._pending.append(data)

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._closed:
            transport.close()
            return
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._pending:
            self._transport.write(b"".join(self._pending))
            self._pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._client.upstream_failed(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._head_len < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = _content_length(bytes(buf[:end]))
                if length is None:
                    self.close()  # not framable by the sketch: connection_lost answers 502
                    return
                self._head_len, self._body_len = end + 4, length
            total = self._head_len + self._body_len
            if len(buf) < total:
                return
            response = bytes(buf[:total])
            del buf[:total]
            self._head_len = -1
            self._client.upstream_response(response)


def _content_length(head: bytes) -> int | None:
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0 or b"\r\ntransfer-encoding:" in lower:
        return None
    start += len(b"\r\ncontent-length:")
    end = lower.find(b"\r\n", start)
    try:
        return int(lower[start:] if end < 0 else lower[start:end])
    except ValueError:
        return None


async def serve(host: str, port: int, config: Config, side: type[ClientSide] = ClientSide) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: side(config, loop), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 0.5)


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_protocol", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", help="HOST:PORT of the upstream for allowed hosts")
    parser.add_argument("--allow", action="append", default=[], help="allowed host (repeat)")
    parser.add_argument(
        "--parser", choices=("aiohttp", "httptools"), default="aiohttp", help="request parser"
    )
    args = parser.parse_args(argv)
    if HttpRequestParser.__module__ != "aiohttp._http_parser":
        # The pure-Python parser would measure something else entirely.
        print("warning: aiohttp's C parser is not in use", file=sys.stderr)
    up_host, up_port = _split(args.upstream) if args.upstream else (None, 0)
    config = Config(frozenset(normalise_host(h) for h in args.allow), up_host, up_port)
    host, port = _split(args.listen)
    side = HttptoolsClientSide if args.parser == "httptools" else ClientSide
    uvloop.run(serve(host, port, config, side))


if __name__ == "__main__":
    main()
