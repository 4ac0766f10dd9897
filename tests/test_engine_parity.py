"""Upstream failures both engines answer and count alike (contract §5:
``gateway_upstream_errors_total{kind}``), each test run over both engines (conftest).

- A WebSocket upgrade whose upstream accepts the connection but never answers the
  handshake: 504 after ``read_s`` and a ``timeout`` error. (The aiohttp engine's
  ``ws_connect`` ran under the session's timeouts, none: it waited for ever, counted
  nothing and kept the request in flight.)
- A WebSocket's upstream, chosen as any request's: round robin, an upstream refusing the
  connection marked down and the next one tried; every one refusing is a 502. (The
  aiohttp engine tried only the first upstream.)
- A client that closes its connection inside its request's body: refused as bad_request
  (as nginx logs a 400), not allowed. (The fast engine counted it allowed.)
- A response body that fails after its head was relayed: the client's connection is cut;
  bytes that break the framing (a bad chunk size line) count as ``protocol``, a body the
  upstream's close cut short as ``reset``. (The aiohttp engine counted every body failure
  as ``reset``; under llhttp a bad chunk size line after the head left the relay waiting
  for ever, and under the pure-Python parser the error escaped uncounted.) Too many
  trailer fields count as ``protocol`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Gateway, Upstream, metric_sum, read_response, running_gateway, wait_until
from test_fast_engine import Conn, RawUpstream
from test_fast_engine import config as env_config

from bench.proc import free_port

READ_S = 1.0
ERRORS = "gateway_upstream_errors_total"
KINDS = ("connect", "timeout", "reset", "protocol")
# The aiohttp engine under llhttp and under aiohttp's pure-Python parser (the fast engine
# reads responses with httptools' llhttp either way).
PARSERS = {"c": {}, "python": {"AIOHTTP_NO_EXTENSIONS": "1"}}
UPGRADE = (
    b"GET /socket HTTP/1.1\r\nHost: www.acme.com\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def config(upstream_url: str) -> dict[str, Any]:
    return env_config(upstream_url, timeouts={"read_s": READ_S})


def errors(gw: Gateway) -> dict[str, float]:
    m = gw.metrics()
    return {kind: metric_sum(m, ERRORS, kind=kind) for kind in KINDS}


def only_error(gw: Gateway, kind: str) -> None:
    """Waits (15 s ceiling) for exactly one upstream error, of ``kind``, and nothing in
    flight."""
    want = {k: 1.0 if k == kind else 0.0 for k in KINDS}
    try:
        wait_until(lambda: errors(gw) == want, timeout=15)
    except AssertionError:
        raise AssertionError(f"upstream errors {errors(gw)}, expected {want}") from None
    wait_until(lambda: metric_sum(gw.metrics(), "gateway_requests_in_flight") == 0, timeout=15)


def read_to_end(s: socket.socket) -> bytes:
    """What the gateway sends until it ends the connection (a close or a reset); fails if
    it does neither within the socket's timeout."""
    rest = bytearray()
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return bytes(rest)
        except TimeoutError:
            raise AssertionError(
                f"the gateway neither ended nor cut the response (after {bytes(rest)!r})"
            ) from None
        if not data:
            return bytes(rest)
        rest += data


# -- a WebSocket handshake nobody answers ---------------------------------------------------


class SilentUpstream:
    """An asyncio server on loopback, in its own thread: accepts connections and reads
    whatever arrives, never writes a byte."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "silent upstream did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._writers.append(writer)
            while data := await reader.read(65536):
                self.received += data

        self._server = self._loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for w in self._writers:
                w.close()
            await asyncio.sleep(0.05)  # the handlers see their connections end
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(stop()))
        self._thread.join(10)


@pytest.fixture
def silent_upstream() -> Iterator[SilentUpstream]:
    up = SilentUpstream()
    yield up
    up.close()


def test_websocket_handshake_never_answered_is_a_504(
    silent_upstream: SilentUpstream, tmp_path: Path
) -> None:
    with (
        running_gateway(config(silent_upstream.url), tmp_path) as gw,
        socket.create_connection(("127.0.0.1", gw.port()), timeout=30) as s,
    ):
        started = time.monotonic()
        s.sendall(UPGRADE)
        buf = bytearray()
        r = read_response(s, buf)
        waited = time.monotonic() - started
        assert (r.status, r.body) == (504, b"504 upstream did not answer in time\n")
        assert r.header("Cache-Control") == "no-store"
        # The upgrade request reached the upstream, which accepted it and stayed silent:
        # the 504 is the read timeout's (a lower bound only: later is never wrong here).
        assert silent_upstream.accepted == 1
        assert b"\r\nupgrade: websocket\r\n" in bytes(silent_upstream.received).lower()
        assert waited >= 0.9 * READ_S, waited
        # What a client sends after an upgrade request is not a next request: closed.
        assert read_to_end(s) == b"" and not buf
        only_error(gw, "timeout")


def _ws_frame(payload: bytes) -> bytes:
    """A masked text frame (client to server), payload under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_websocket_tunnel_outlives_read_s(upstream: Upstream, tmp_path: Path) -> None:
    """read_s bounds the handshake's answer, not the tunnel: a WebSocket silent for longer
    than read_s stays open (its own limit is websocket_idle_s)."""
    with (
        running_gateway(config(upstream.url), tmp_path) as gw,
        socket.create_connection(("127.0.0.1", gw.port()), timeout=15) as s,
    ):
        s.sendall(UPGRADE.replace(b"/socket", b"/__ws"))
        buf = bytearray()
        assert read_response(s, buf).status == 101
        time.sleep(3 * READ_S)
        s.sendall(_ws_frame(b"still here"))
        while len(buf) < 12:  # an unmasked text frame: 2 bytes of header, 10 of payload
            data = s.recv(65536)
            assert data, "the gateway closed the WebSocket"
            buf += data
        assert bytes(buf[:12]) == b"\x81\x0astill here"
        assert errors(gw) == dict.fromkeys(KINDS, 0.0)


def test_websocket_fails_over_to_the_next_upstream(upstream: Upstream, tmp_path: Path) -> None:
    """A WebSocket's upstream is chosen as any request's: round robin, an upstream that
    refuses the connection marked down and the next one tried. (The aiohttp engine only
    ever tried the first upstream: with it down, every WebSocket failed.)"""
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = env_config(dead, upstreams=[dead, upstream.url], timeouts={"read_s": READ_S})
    with running_gateway(cfg, tmp_path) as gw:
        # Three handshakes: the round robin starts at the refusing upstream for one of the
        # first two, which marks it down for the rest of the test (FAIL_TIMEOUT_S).
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", gw.port()), timeout=15) as s:
                s.sendall(UPGRADE.replace(b"/socket", b"/__ws"))
                assert read_response(s, bytearray()).status == 101
        wait_until(lambda: errors(gw)["connect"] == 1, timeout=15)
        assert errors(gw) == {"connect": 1.0, "timeout": 0.0, "reset": 0.0, "protocol": 0.0}


def test_websocket_every_upstream_refusing_is_a_502(tmp_path: Path) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with running_gateway(env_config(dead[0], upstreams=dead), tmp_path) as gw:
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=15) as s:
            s.sendall(UPGRADE)
            r = read_response(s, bytearray())
            assert (r.status, r.body) == (502, b"502 upstream refused the WebSocket\n")
            assert read_to_end(s) == b""
        wait_until(lambda: errors(gw)["connect"] == 2, timeout=15)


def test_client_gone_inside_its_body_is_a_bad_request(upstream: Upstream, tmp_path: Path) -> None:
    """A client that closes its connection inside its request's body: refused as
    bad_request, not allowed, and no upstream error (the fast engine counted it allowed);
    its access log line says so (the aiohttp engine's said allowed, status 400)."""
    log_path = tmp_path / "access.log"
    with running_gateway(env_config(upstream.url), tmp_path, "--access-log", str(log_path)) as gw:
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=15) as s:
            s.sendall(
                b"POST /echo HTTP/1.1\r\nHost: www.acme.com\r\nContent-Length: 100000\r\n\r\n"
                + b"x" * 1000
            )
            time.sleep(0.3)  # the request is decided and its body under way
        counted = {
            "allowed": lambda m: metric_sum(m, "gateway_requests_allowed_total"),
            "bad_request": lambda m: metric_sum(
                m, "gateway_requests_blocked_total", reason="bad_request"
            ),
            "in_flight": lambda m: metric_sum(m, "gateway_requests_in_flight"),
        }
        want = {"allowed": 0, "bad_request": 1, "in_flight": 0}
        wait_until(lambda: {k: f(gw.metrics()) for k, f in counted.items()} == want, timeout=15)
        assert errors(gw) == dict.fromkeys(KINDS, 0.0)
        wait_until(lambda: log_path.exists() and log_path.read_text().strip() != "", timeout=15)
        (line,) = [json.loads(x) for x in log_path.read_text().splitlines()]
        assert (line["decision"], line["reason"], line["status"], line["method"]) == (
            "blocked",
            "bad_request",
            400,
            "POST",
        )


# -- a body that fails after the head ---------------------------------------------------------


class AfterHead:
    """An upstream that sends a response head and the start of its body, waits until the
    client has received them through the gateway, then sends ``then`` (bytes, or None to
    close the connection)."""

    def __init__(self, raw_upstream: Callable[[Callable[[Conn], None]], RawUpstream]) -> None:
        self.relayed = threading.Event()
        self.up = raw_upstream(self._handler)
        self.start = b""
        self.then: bytes | None = None

    def _handler(self, conn: Conn) -> None:
        if conn.read_request() is None:
            return
        conn.send(self.start)
        if not self.relayed.wait(15):
            return
        if self.then is None:
            return  # the connection is closed
        with contextlib.suppress(OSError):  # (refused and closed by the gateway meanwhile)
            conn.send(self.then)
        # Kept open from this side: whatever the gateway makes of the bytes, it is not
        # the upstream's close.
        conn.sock.settimeout(30)
        with contextlib.suppress(OSError):
            conn.sock.recv(1)

    def fetch(self, gw: Gateway, first: bytes) -> bytes:
        """GET through the gateway: reads the head and the body's start up to ``first``
        (as the gateway frames it), lets the upstream go on, and returns the body's bytes
        as framed to the client, up to the end of the connection (which must end)."""
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: www.acme.com\r\n\r\n")
            buf = bytearray()
            while first not in bytes(buf).partition(b"\r\n\r\n")[2]:
                data = s.recv(65536)
                assert data, f"closed before the head and {first!r}: {bytes(buf)!r}"
                buf += data
            head, _, body = bytes(buf).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            self.relayed.set()
            return body + read_to_end(s)


@pytest.fixture
def raw_upstream() -> Iterator[Callable[[Callable[[Conn], None]], RawUpstream]]:
    made: list[RawUpstream] = []

    def make(handler: Callable[[Conn], None]) -> RawUpstream:
        made.append(up := RawUpstream(handler))
        return up

    yield make
    for up in made:
        up.close()


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize(
    "then",
    [
        # Not a chunk size: the framing is broken.
        pytest.param(b"zz\r\nxx\r\n0\r\n\r\n", id="bad-chunk-size"),
        # 2 MiB of trailer fields, never ended: past aiohttp's 128 fields and the fast
        # engine's byte bound on what is not body.
        pytest.param(b"0\r\n" + b"X-T: v\r\n" * 262144, id="endless-trailer-fields"),
    ],
)
def test_broken_framing_after_the_head_is_a_protocol_error(
    raw_upstream: Any, tmp_path: Path, parser: str, then: bytes
) -> None:
    up = AfterHead(raw_upstream)
    up.start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
    up.then = then
    with running_gateway(config(up.up.url), tmp_path, env=PARSERS[parser]) as gw:
        # Cut after the first chunk, never completed: nothing of the bytes after it.
        assert up.fetch(gw, b"2\r\nok\r\n") == b"2\r\nok\r\n"
        only_error(gw, "protocol")


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize(
    "start",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort", id="chunked"
        ),
    ],
)
def test_body_cut_short_by_the_upstream_is_a_reset(
    raw_upstream: Any, tmp_path: Path, parser: str, start: bytes
) -> None:
    up = AfterHead(raw_upstream)
    up.start = start
    up.then = None  # closed with 95 (or 11) bytes of the body missing
    with running_gateway(config(up.up.url), tmp_path, env=PARSERS[parser]) as gw:
        body = up.fetch(gw, b"short")
        # Cut where the upstream's body ended: never completed for the client.
        if b"Content-Length" in start:
            assert body == b"short"
        else:
            assert body.endswith((b"short", b"short\r\n")) and b"0\r\n\r\n" not in body, body
        only_error(gw, "reset")


@pytest.mark.sansio
def test_body_failure_kinds_from_aiohttp_errors() -> None:
    """The aiohttp engine's reading of aiohttp's errors (each shape seen live above)."""
    import aiohttp
    from aiohttp import http_exceptions as hx
    from aiohttp.client_proto import ResponseHandler

    from gateway.proxy import body_failure_kind

    def wrapped(cause: BaseException) -> aiohttp.ClientPayloadError:
        exc = aiohttp.ClientPayloadError(f"Response payload is not completed: {cause!r}")
        exc.__cause__ = cause
        return exc

    not_enough = "Not enough data to satisfy transfer length header."
    assert body_failure_kind(aiohttp.SocketTimeoutError(), None) == "timeout"
    assert body_failure_kind(wrapped(hx.ContentLengthError("short")), None) == "reset"
    assert body_failure_kind(wrapped(hx.TransferEncodingError(not_enough)), None) == "reset"
    assert body_failure_kind(wrapped(hx.PayloadEncodingError("eof")), None) == "reset"
    assert body_failure_kind(aiohttp.ServerDisconnectedError(), None) == "reset"
    # Refused bytes: a parser error other than "not enough data" as the cause (too many
    # trailer fields), the pure-Python parser's own error, or one the protocol recorded.
    assert body_failure_kind(wrapped(hx.BadHttpMessage("Too many headers")), None) == "protocol"
    assert body_failure_kind(hx.TransferEncodingError("zz\r"), None) == "protocol"
    loop = asyncio.new_event_loop()
    try:
        protocol = ResponseHandler(loop)
        bad_size = wrapped(hx.TransferEncodingError("bad chunk size"))
        assert body_failure_kind(bad_size, protocol) == "reset"  # nothing recorded: a cut
        protocol.set_exception(hx.HttpProcessingError(code=400, message="bad chunk size"))
        assert body_failure_kind(bad_size, protocol) == "protocol"
    finally:
        loop.close()
