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

from gateway.tls_accept import TLSListener

HEADER = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n"


class Echo(asyncio.Protocol):
    """Answers, once a line "hello" arrives, with everything received on the connection."""

    def __init__(self) -> None:
        self.seen = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sni = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if self.seen.endswith(b"hello\n") and self.transport is not None:
            self.transport.write(b"got " + self.seen)


class FakeRuntime:
    def __init__(self, proxy_protocol: bool) -> None:
        self.snapshot = SimpleNamespace(
            listeners={"l": SimpleNamespace(proxy_protocol=proxy_protocol)},
            config=SimpleNamespace(timeouts=SimpleNamespace(header_s=2.0)),
        )
        self.refused: list[str] = []

    def refused_connection(self, listener: str, reason: str) -> None:
        assert listener == "l"
        self.refused.append(reason)


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


async def _serve(
    server_ctx: ssl.SSLContext, proxy_protocol: bool
) -> tuple[asyncio.AbstractServer, int, FakeRuntime, list[Echo]]:
    runtime = FakeRuntime(proxy_protocol)
    apps: list[Echo] = []

    def factory() -> Echo:
        apps.append(Echo())
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
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", port)
        if split:
            raw_writer.write(HEADER)
            await raw_writer.drain()
            await asyncio.sleep(0.05)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_ctx.wrap_bio(incoming, outgoing, server_hostname="www.acme.com")
        first = not split
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flight = outgoing.read()
                if flight:
                    raw_writer.write((HEADER if first else b"") + flight)
                    first = False
                incoming.write(await raw_reader.read(65536))
        obj.write(b"hello\n")
        raw_writer.write(outgoing.read())
        answer = b""
        while not answer.endswith(b"\n"):
            try:
                answer += obj.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(await raw_reader.read(65536))
        assert answer == b"got " + HEADER + b"hello\n"
        raw_writer.close()
        # A bad header: closed before any TLS, counted as the PROXY protocol's.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x02\x00" + b"\x00" * 40)
        assert await _closed(reader) == b""
        writer.close()
        await asyncio.sleep(0.05)
        srv.close()
        assert runtime.refused == ["proxy_protocol"]
        assert len(apps) == 1

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

    run(main())
