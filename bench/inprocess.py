"""The fast engine's own Python per request, in-process: no sockets, no system calls.

A ``ClientConnection`` and an ``UpstreamConnection`` of the fast engine get fake
transports; a request (the bench's ``GET /`` with one Host header) is fed to
``data_received``, and for a proxied one the upstream's answer (nginx's, as in the bench)
to the upstream connection. What it measures is what py-spy's profiles spread over the
system calls: the parsers, the decision and the engine's own steps. The bare sketch
(``bench.bare_protocol``) is measured the same way for comparison.

Steady to about ±0.1 µs on a quiet machine (the minimum of ``--reps`` runs), where a
throughput run moves by ±10 %: use it to compare two versions of the engine, one
change at a time.

    python -m bench.inprocess                 # both scenarios: fast (compiled), fast-py, bare
    python -m bench.inprocess --requests 50000 --reps 30
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import uvloop

REQUESTS = {
    "refused": b"GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
    "proxied": b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
}
# What the bench's upstream (nginx, `return 200`) answers.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 18:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
    b"Connection: keep-alive\r\n\r\nok\n"
)
CONFIG = {
    "environments": [
        {
            "name": "bench",
            "hostname": "bench.example",
            "secure_endpoints": ["allowed.example"],
            "upstreams": ["http://127.0.0.1:9"],
        }
    ],
    "listeners": [
        {
            "name": "bench",
            "bind": "127.0.0.1:0",
            "environments": ["bench"],
            "default_environment": "bench",
        }
    ],
}


class FakeTransport:
    """Keeps the last write only, so that a run does not grow the heap."""

    def __init__(self) -> None:
        self.last = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.last = data

    def writelines(self, parts: Iterable[bytes]) -> None:
        self.last = b"".join(parts)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def best_of(step: Callable[[], None], requests: int, reps: int) -> float:
    """µs per request: the minimum over ``reps`` runs of ``requests`` steps."""
    for _ in range(min(2000, requests)):
        step()
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        started = time.perf_counter()
        for _ in range(requests):
            step()
        best = min(best, (time.perf_counter() - started) / requests * 1e6)
    return best


def fast_package(interpreted: bool) -> str:
    """The fast engine's package as ``--engine fast`` would run it (the compiled build
    when there is a current one), or its sources interpreted."""
    from gateway.fast import COMPILED_PACKAGE, engine_class

    if interpreted or engine_class()[1] != "compiled":
        return "gateway.fast"
    return COMPILED_PACKAGE


async def fast_engine(scenario: str, requests: int, reps: int, interpreted: bool = False) -> float:
    from gateway.config import load_bytes
    from gateway.runtime import Runtime

    package = fast_package(interpreted)
    FastEngine = importlib.import_module(f"{package}.engine").FastEngine
    protocol = importlib.import_module(f"{package}.protocol")
    ClientConnection, Listener = protocol.ClientConnection, protocol.Listener
    UpstreamConnection = importlib.import_module(f"{package}.upstream").UpstreamConnection

    loop = asyncio.get_running_loop()
    runtime = Runtime(load_bytes(json.dumps(CONFIG).encode()))
    engine = FastEngine(runtime)
    engine.forwarder.start(loop)
    listener = Listener("bench", runtime, engine.forwarder, None, engine._ids, engine._date, loop)
    client = ClientConnection(listener)
    client.connection_made(FakeTransport())  # type: ignore[arg-type]
    request = REQUESTS[scenario]
    if scenario == "refused":
        step: Callable[[], None] = lambda: client.data_received(request)  # noqa: E731
    else:
        # The first request would connect: give it a pooled connection instead.
        client.data_received(request)
        fwd = client.current
        assert fwd is not None and fwd.route is not None
        if fwd.connecting is not None:
            fwd.connecting.cancel()
            fwd.connecting = None
        upstream = UpstreamConnection(
            engine.forwarder, fwd.route.env.upstreams[0], fwd.route.idle[0]
        )
        upstream.connection_made(FakeTransport())  # type: ignore[arg-type]
        fwd._attach(upstream, False)
        upstream.data_received(RESPONSE)
        await asyncio.sleep(0)

        def step() -> None:
            client.data_received(request)
            upstream.data_received(RESPONSE)

    result = best_of(step, requests, reps)
    engine.forwarder.close()
    engine._date.stop()
    return result


async def bare_sketch(scenario: str, requests: int, reps: int) -> float:
    from bench.bare_protocol import ClientSide, Config, UpstreamSide

    loop = asyncio.get_running_loop()
    client = ClientSide(Config(frozenset({"allowed.example"}), "127.0.0.1", 9), loop)
    client.connection_made(FakeTransport())  # type: ignore[arg-type]
    request = REQUESTS[scenario]
    if scenario == "refused":
        step: Callable[[], None] = lambda: client.data_received(request)  # noqa: E731
    else:
        upstream = UpstreamSide(client)
        client._upstream = upstream
        upstream.connection_made(FakeTransport())  # type: ignore[arg-type]

        def step() -> None:
            client.data_received(request)
            upstream.data_received(RESPONSE)

    return best_of(step, requests, reps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    p.add_argument("--scenarios", default="refused,proxied")
    p.add_argument("--systems", default="fast,fast-py,bare")
    p.add_argument("--requests", type=int, default=20000, help="requests per run")
    p.add_argument("--reps", type=int, default=20, help="runs; the minimum is kept")
    a = p.parse_args(argv)
    # A refusal flood: the refusal log's lines (rate-limited) would go to stderr.
    logging.getLogger("gateway").setLevel(logging.CRITICAL)
    runners: dict[str, Callable[[str, int, int], Awaitable[float]]] = {
        "fast": fast_engine,
        "fast-py": functools.partial(fast_engine, interpreted=True),
        "bare": bare_sketch,
    }
    print(f"fast: {fast_package(False)}, fast-py: {fast_package(True)}", flush=True)

    async def run() -> None:
        for system in a.systems.split(","):
            for scenario in a.scenarios.split(","):
                us = await runners[system](scenario, a.requests, a.reps)
                print(f"{system:7} {scenario:8} {us:6.2f} µs per request", flush=True)

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
