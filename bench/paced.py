"""Latency at a fixed rate: a paced, open-loop HTTP/1.1 client.

Request i is due at `t0 + i / rate`, whatever happened to the earlier ones. At its due
time it goes out on an idle keep-alive connection of the pool, or waits in a backlog for
the next connection that frees up. Its latency is counted from the DUE time, not from when
it was written, so a server stall shows up in the percentiles of every request it delayed
(wrk's closed loop would send fewer requests during the stall and hide it: coordinated
omission). Requests still unanswered at the end are counted at their lower bound.

Cheap enough to drive ~10k req/s from one core: uvloop, one `asyncio.Protocol` per
connection writing one prebuilt request, and a minimal response framer (status line,
Content-Length, Connection: close) instead of a full HTTP client. The targets answer
with small fixed-size bodies; chunked responses are counted as errors.

Timers on uvloop have millisecond resolution, so requests go out in small batches up to
~1 ms late; that lateness is part of every latency and is reported as `client_lag`.

    python -m bench.paced --port PORT --host-header allowed.example --rate 10000 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import resource
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any, cast

import uvloop

HELD_FRACTION = 0.95  # achieved/target below this: the rate was not held
_MIN_TICK_S = 0.001


@dataclass(frozen=True)
class PacedResult:
    target_rate: float
    duration_s: float
    connections: int
    scheduled: int
    completed: int
    errors: int
    connect_errors: int
    unfinished: int
    achieved_rate: float
    held: bool
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    service_p50_ms: float
    service_p99_ms: float
    client_lag_p50_ms: float
    client_lag_p99_ms: float
    client_cpu_fraction: float
    statuses: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: the value some request really saw)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Conn(asyncio.Protocol):
    def __init__(self, client: PacedClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.due = 0.0  # due time of the request in flight
        self.sent_at = 0.0  # when it was written
        self.busy = False
        self._buf = b""
        self._head_len = -1
        self._body_len = 0
        self._status = 0
        self._close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, due: float, now: float) -> None:
        assert self.transport is not None
        self.due = due
        self.sent_at = now
        self.busy = True
        self.transport.write(self.client.request)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while True:
            if self._head_len < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                length = _header_int(head, b"\r\ncontent-length:")
                if length is None or not head.startswith(b"http/1."):
                    self.client.protocol_error(self)
                    return
                self._status = int(head[9:12])
                self._close = b"\r\nconnection: close" in head
                self._head_len, self._body_len = end + 4, length
            total = self._head_len + self._body_len
            if len(buf) < total:
                break
            buf = buf[total:]
            self._head_len = -1
            self.busy = False
            self.client.on_response(self, self._status, self._close)
            if self._close:
                return
        self._buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client.on_lost(self)


def _header_int(head: bytes, name: bytes) -> int | None:
    start = head.find(name)
    if start < 0:
        return None
    start += len(name)
    end = head.find(b"\r\n", start)
    try:
        return int(head[start:] if end < 0 else head[start:end])
    except ValueError:
        return None


class PacedClient:
    def __init__(
        self,
        host: str,
        port: int,
        host_header: str,
        rate: float,
        duration: float,
        connections: int,
        grace: float,
    ) -> None:
        self.host, self.port = host, port
        self.request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode("ascii")
        self.rate, self.duration, self.n_conns, self.grace = rate, duration, connections, grace
        self.total = max(1, int(rate * duration))
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.backlog: deque[float] = deque()
        self.latencies = array("d")
        self.lags = array("d")
        self.service = array("d")  # from the write, for reference only
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.connect_errors = 0
        self.next_i = 0
        self.t0 = 0.0
        self.last_done = 0.0
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _connect(self) -> _Conn:
        _, conn = await self._loop.create_connection(lambda: _Conn(self), self.host, self.port)
        self.conns.add(conn)
        return conn

    async def _replace(self) -> None:
        """A connection closed: open another and give it the backlog's next request."""
        try:
            conn = await self._connect()
        except OSError:
            # Not a request error: the requests waiting for it are still in the backlog.
            self.connect_errors += 1
            await asyncio.sleep(0.05)
            if not self.finished:
                self._spawn(self._replace())
            return
        self._take_work(conn, time.monotonic())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> PacedResult:
        for conn in await asyncio.gather(*(self._connect() for _ in range(self.n_conns))):
            self.idle.append(conn)
        cpu0 = _cpu_seconds()
        self.t0 = time.monotonic() + 0.01
        self._loop.call_later(0.01, self._tick)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._done), self.duration + self.grace + 0.05)
        end = time.monotonic()
        cpu = _cpu_seconds() - cpu0
        self.finished = True
        return self._result(end, cpu / max(1e-9, end - self.t0))

    def _tick(self) -> None:
        self._dispatch(time.monotonic())
        if self.next_i < self.total:
            # uvloop timers count whole milliseconds: a shorter delay rounds to 0 and the
            # loop would spin, stealing the core the upstream shares. So the timer fires
            # at most once a millisecond; between ticks, responses also dispatch what has
            # fallen due (see on_response), which keeps client_lag small under load.
            delay = self.t0 + self.next_i / self.rate - time.monotonic()
            self._loop.call_later(max(_MIN_TICK_S, delay), self._tick)
        else:
            self._check_done()

    def _dispatch(self, now: float) -> None:
        """Send every request due by `now`: on an idle connection, else to the backlog."""
        due = min(self.total, math.floor((now - self.t0) * self.rate) + 1)
        i = self.next_i
        if i >= due:
            return
        t0, rate, idle = self.t0, self.rate, self.idle
        while i < due:
            when = t0 + i / rate
            i += 1
            if idle:
                idle.pop().send(when, now)
                self.lags.append(now - when)
            else:
                self.backlog.append(when)
        self.next_i = i

    def _take_work(self, conn: _Conn, now: float) -> None:
        if self.finished:
            return
        if self.backlog:
            conn.send(self.backlog.popleft(), now)
        else:
            self.idle.append(conn)

    def on_response(self, conn: _Conn, status: int, close: bool) -> None:
        now = time.monotonic()
        self.latencies.append(now - conn.due)
        self.service.append(now - conn.sent_at)
        self.statuses[status] += 1
        self.last_done = now
        if close:
            assert conn.transport is not None
            conn.transport.close()  # on_lost opens a replacement
        else:
            self._take_work(conn, now)
        if self.next_i < self.total:
            self._dispatch(now)
        self._check_done()

    def protocol_error(self, conn: _Conn) -> None:
        self.errors += 1
        conn.busy = False
        if conn.transport is not None:
            conn.transport.close()
        self._check_done()

    def on_lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.errors += 1
        if not self.finished:
            self._spawn(self._replace())
        self._check_done()

    def _check_done(self) -> None:
        if (
            self.next_i >= self.total
            and len(self.latencies) + self.errors >= self.total
            and not self._done.done()
        ):
            self._done.set_result(None)

    def _result(self, end: float, cpu_fraction: float) -> PacedResult:
        # Unanswered requests count at their lower bound, so a stall cannot vanish from
        # the percentiles by never completing.
        censored = [end - c.due for c in self.conns if c.busy]
        censored += [end - due for due in self.backlog]
        completed = len(self.latencies)
        unfinished = max(0, self.total - completed - self.errors)
        values = sorted([*self.latencies, *censored])
        lags = sorted(self.lags)
        service = sorted(self.service)
        span = max(self.duration, (self.last_done or end) - self.t0)
        achieved = completed / span
        ms = 1000.0
        return PacedResult(
            target_rate=self.rate,
            duration_s=self.duration,
            connections=self.n_conns,
            scheduled=self.total,
            completed=completed,
            errors=self.errors,
            connect_errors=self.connect_errors,
            unfinished=unfinished,
            achieved_rate=round(achieved, 1),
            held=achieved >= HELD_FRACTION * self.rate and self.errors == 0,
            p50_ms=round(percentile(values, 0.50) * ms, 3),
            p90_ms=round(percentile(values, 0.90) * ms, 3),
            p99_ms=round(percentile(values, 0.99) * ms, 3),
            p999_ms=round(percentile(values, 0.999) * ms, 3),
            max_ms=round(values[-1] * ms, 3) if values else math.nan,
            service_p50_ms=round(percentile(service, 0.50) * ms, 3),
            service_p99_ms=round(percentile(service, 0.99) * ms, 3),
            client_lag_p50_ms=round(percentile(lags, 0.50) * ms, 3),
            client_lag_p99_ms=round(percentile(lags, 0.99) * ms, 3),
            client_cpu_fraction=round(cpu_fraction, 3),
            statuses={str(k): v for k, v in sorted(self.statuses.items())},
        )

    def close(self) -> None:
        self.finished = True
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    port: int,
    host_header: str,
    rate: float,
    duration: float,
    connections: int = 64,
    grace: float = 2.0,
    host: str = "127.0.0.1",
) -> PacedResult:
    client = PacedClient(host, port, host_header, rate, duration, connections, grace)
    try:
        return await client.run()
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.paced",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host-header", required=True, help="value of the Host header")
    parser.add_argument("--rate", type=float, default=10000.0, help="requests/s (total)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of schedule")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive pool size")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to wait for late answers")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections <= 0:
        parser.error("--rate, --duration and --connections must be positive")
    try:
        result = uvloop.run(
            measure(
                args.port,
                args.host_header,
                args.rate,
                args.duration,
                args.connections,
                args.grace,
                args.host,
            )
        )
    except OSError as exc:
        print(f"paced: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        verdict = "held" if result.held else "NOT HELD"
        print(
            f"target {result.target_rate:.0f}/s achieved {result.achieved_rate:.0f}/s "
            f"({verdict}); p50 {result.p50_ms} ms p99 {result.p99_ms} ms "
            f"p99.9 {result.p999_ms} ms max {result.max_ms} ms; errors {result.errors}, "
            f"unfinished {result.unfinished}; client lag p99 {result.client_lag_p99_ms} ms, "
            f"client CPU {result.client_cpu_fraction:.0%}; statuses {result.statuses}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
