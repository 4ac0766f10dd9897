"""gateway/tls_accept.py in-process, on both event loops it supports (uvloop's TLS protocol,
which the gateway runs, and asyncio's, its fallback): the handshake, the PROXY header read
in the clear and handed to the application protocol first, and failed handshakes counted.
The live tests (test_hardening.py) run the same through both engines."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
import uvloop
from support import tls_exchange

from gateway.tls_accept import TLSListener

HEADER = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n"


class Echo(asyncio.Protocol):
    """Answers, once a line "hello" arrives, with everything received on the connection,
    and closes.
    Takes and gives back its slot under the connection cap as the engines' protocols do."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.seen = b""
        self.transport: asyncio.Transport | None = None
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sni = transport.get_extra_info("ssl_object") is not None
        if not self.runtime.admit("l"):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.admitted = True
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.runtime.release("l")

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if self.seen.endswith(b"hello\n") and self.transport is not None:
            self.transport.write(b"got " + self.seen)
            self.transport.close()


class FakeRuntime:
    """What tls_accept reads of gateway.runtime.Runtime, with the same admit/release."""

    def __init__(self, proxy_protocol: bool, max_connections: int = 100) -> None:
        self.snapshot = SimpleNamespace(
            listeners={"l": SimpleNamespace(proxy_protocol=proxy_protocol)},
            config=SimpleNamespace(
                timeouts=SimpleNamespace(header_s=2.0),
                limits=SimpleNamespace(max_connections=max_connections),
            ),
        )
        self.refused: list[str] = []
        self.connections_open = {"l": 0}

    def refused_connection(self, listener: str, reason: str) -> None:
        assert listener == "l"
        self.refused.append(reason)

    def admit(self, listener: str) -> bool:
        if self.connections_open[listener] >= self.snapshot.config.limits.max_connections:
            self.refused_connection(listener, "connection_limit")
            return False
        self.connections_open[listener] += 1
        return True

    def release(self, listener: str) -> None:
        self.connections_open[listener] -= 1
        assert self.connections_open[listener] >= 0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("www.acme.com")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Any], Any]]:
    loop = LOOPS[request.param]()

    def runner(coro: Any) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, 20))

    yield runner
    loop.close()


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes (a TLS alert, say), or b"" if it resets."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def _all_released(runtime: FakeRuntime) -> bool:
    """Every slot taken under the cap given back, once the connections are gone."""
    for _ in range(250):
        if runtime.connections_open["l"] == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def _serve(
    server_ctx: ssl.SSLContext, proxy_protocol: bool, max_connections: int = 100
) -> tuple[asyncio.AbstractServer, int, FakeRuntime, list[Echo]]:
    runtime = FakeRuntime(proxy_protocol, max_connections)
    apps: list[Echo] = []

    def factory() -> Echo:
        apps.append(Echo(runtime))
        return apps[-1]

    listener = TLSListener("l", runtime, server_ctx, factory)  # type: ignore[arg-type]
    srv = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1], runtime, apps


def test_handshake_then_the_application_protocol(
    run: Callable[[Any], Any], certs: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = certs

    async def main() -> None:
        srv, port, runtime, apps = await _serve(server_ctx, proxy_protocol=False)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="www.acme.com"
        )
        writer.write(b"hello\n")
        assert await reader.readline() == b"got hello\n"
        writer.close()
        # Plain bytes to the TLS port: refused by the TLS layer, counted.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await _closed(reader)
        writer.close()
        # Connect and close (a TCP health check): not counted.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        for _ in range(100):
            await asyncio.sleep(0.02)
        srv.close()
        assert runtime.refused == ["tls_handshake"]
        assert len(apps) == 1 and apps[0].sni  # made for the completed handshake only
        assert await _all_released(runtime)

    run(main())


@pytest.mark.parametrize("split", [False, True])
def test_the_proxy_header_comes_first_in_the_clear(
    run: Callable[[Any], Any], certs: tuple[ssl.SSLContext, ssl.SSLContext], split: bool
) -> None:
    """The header and the ClientHello in one segment (or the header alone first): the TLS
    layer gets exactly the bytes after the header, and the application protocol gets the
    header before anything the client sends over TLS."""
    server_ctx, client_ctx = certs

    async def main() -> None:
        srv, port, runtime, apps = await _serve(server_ctx, proxy_protocol=True)
        answer = await asyncio.get_running_loop().run_in_executor(
            None, tls_exchange, port, client_ctx, "www.acme.com", HEADER, b"hello\n", split
        )
        assert answer == b"got " + HEADER + b"hello\n"
        # A bad header: closed before any TLS, counted as the PROXY protocol's.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x02\x00" + b"\x00" * 40)
        assert await _closed(reader) == b""
        writer.close()
        await asyncio.sleep(0.05)
        srv.close()
        assert runtime.refused == ["proxy_protocol"]
        assert len(apps) == 1
        assert await _all_released(runtime)

    run(main())


def test_the_handshake_must_finish_within_the_header_timeout(
    run: Callable[[Any], Any], certs: tuple[ssl.SSLContext, ssl.SSLContext], tmp_path: Path
) -> None:
    server_ctx, _ = certs

    async def main() -> None:
        srv, port, runtime, apps = await _serve(server_ctx, proxy_protocol=False)
        runtime.snapshot.config.timeouts.header_s = 0.3
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        started = asyncio.get_running_loop().time()
        assert await _closed(reader) == b""
        waited = asyncio.get_running_loop().time() - started
        writer.close()
        await asyncio.sleep(0.05)
        srv.close()
        assert runtime.refused == ["tls_handshake"] and not apps
        assert waited >= 0.25, waited
        assert await _all_released(runtime)

    run(main())


def test_connections_in_their_handshake_count_against_the_cap(
    run: Callable[[Any], Any], certs: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A slot under max_connections is taken at accept, not after the handshake: clients
    left half-way through one cannot hold TLS buffers past the cap. The slot passes to the
    application protocol with the connection, and every path gives it back."""
    server_ctx, client_ctx = certs

    async def main() -> None:
        srv, port, runtime, apps = await _serve(server_ctx, False, max_connections=2)
        stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in stalled:
            writer.write(b"\x16\x03\x01")  # a ClientHello begun, never finished
        await asyncio.sleep(0.2)
        assert runtime.connections_open["l"] == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed(reader) == b""  # over the cap: reset at once
        writer.close()
        assert runtime.refused == ["connection_limit"]
        stalled[0][1].close()  # one gives up: its slot is free again
        for _ in range(100):
            if runtime.connections_open["l"] == 1:
                break
            await asyncio.sleep(0.02)
        assert runtime.connections_open["l"] == 1
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="www.acme.com"
        )
        writer.write(b"hello\n")
        assert await reader.readline() == b"got hello\n"
        assert runtime.connections_open["l"] == 2  # the slot went to the app, not twice
        writer.close()
        stalled[1][1].close()
        for _ in range(200):
            if runtime.connections_open["l"] == 0:
                break
            await asyncio.sleep(0.02)
        srv.close()
        assert runtime.connections_open["l"] == 0
        assert runtime.refused == ["connection_limit"] and len(apps) == 1

    run(main())
