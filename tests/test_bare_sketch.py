"""The bare sketch of the benchmark (bench/bare_protocol.py) on its two request parsers.

`bench.harness` compares the sketch on aiohttp's parser (`bare-protocol`) with the same
sketch on httptools' (`bare-httptools`) to show what the parser costs: the comparison only
means something if the two do the same thing. Same raw requests to both, over a real
upstream; the same responses, and what the upstream received the same.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
from support import Proc, RawResponse, Upstream, raw_request, start_upstream, wait_until

from bench.proc import free_port

ALLOWED = "allowed.example"

CASES: dict[str, tuple[bytes, int]] = {
    "refused": (b"GET / HTTP/1.1\r\nHost: unknown.example\r\n\r\n", 1),
    "refused, close": (b"GET / HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n", 1),
    "refused, HTTP/1.0": (b"GET / HTTP/1.0\r\nHost: unknown.example\r\n\r\n", 1),
    "allowed": (b"GET /a?b=1 HTTP/1.1\r\nHost: Allowed.Example:80\r\nX-Thing: 1\r\n\r\n", 1),
    "allowed, hop-by-hop dropped": (
        b"GET / HTTP/1.1\r\nHost: allowed.example\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n\r\n",
        1,
    ),
    "pipelined, in order": (
        b"GET /1 HTTP/1.1\r\nHost: allowed.example\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: unknown.example\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
        3,
    ),
    "allowed with a body": (
        b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 3\r\n\r\nabc",
        1,
    ),
    "refused with a body": (
        b"POST / HTTP/1.1\r\nHost: unknown.example\r\nContent-Length: 3\r\n\r\nabc",
        1,
    ),
    "malformed": (b"GET / HTTP/1.1\r\nHost allowed.example\r\n\r\n", 1),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = start_upstream("sketch-up")
    yield up
    up.proc.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sketches(upstream: Upstream) -> Iterator[dict[str, int]]:
    ports: dict[str, int] = {}
    procs = []
    for parser in ("aiohttp", "httptools"):
        port = free_port()
        argv = [sys.executable, "-m", "bench.bare_protocol", "--listen", f"127.0.0.1:{port}"]
        argv += ["--upstream", f"127.0.0.1:{upstream.port}", "--allow", ALLOWED]
        procs.append(Proc([*argv, "--parser", parser]))
        ports[parser] = port
    try:
        for port in ports.values():
            wait_until(lambda port=port: _accepts(port), timeout=20)
        yield ports
    finally:
        for proc in procs:
            proc.stop()


def _seen(responses: list[RawResponse]) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    # The upstream's Date may tick between the two runs; everything else must be equal.
    return [
        (r.status, [(k, v) for k, v in r.headers if k.lower() != "date"], r.body) for r in responses
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_both_parsers_answer_the_same(sketches: dict[str, int], case: str) -> None:
    data, count = CASES[case]
    answers = {parser: raw_request(port, data, count) for parser, port in sketches.items()}
    assert _seen(answers["httptools"]) == _seen(answers["aiohttp"])
    statuses = [r.status for r in answers["aiohttp"]]
    expected = {
        "refused": [503],
        "refused, close": [503],
        "refused, HTTP/1.0": [503],
        "allowed": [200],
        "allowed, hop-by-hop dropped": [200],
        "pipelined, in order": [200, 503, 200],
        "allowed with a body": [501],
        "refused with a body": [503],
        "malformed": [400],
    }[case]
    assert statuses == expected
    if case.startswith("allowed") and statuses == [200]:
        seen = answers["httptools"][0].json()
        names = [name.lower() for name, _ in seen["headers"]]
        forwarding = ("host", "x-forwarded-for", "x-forwarded-proto")
        assert sorted(n for n in names if n in forwarding) == list(forwarding)
        assert "keep-alive" not in names and "te" not in names
        assert dict(seen["headers"])["Host"] == ALLOWED
    if case == "pipelined, in order":
        assert [r.json()["path"] for r in answers["httptools"][::2]] == ["/1", "/3"]
