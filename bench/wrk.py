"""Peak throughput with wrk (closed loop: its latency figures suffer from coordinated
omission under saturation, so only Requests/sec and the error counts are kept)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench.proc import LOOPBACK

_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+)", re.M)
_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def parse(output: str) -> WrkResult:
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if rps is None or total is None:
        raise WrkError(f"could not parse wrk output: {output.strip()[-400:]!r}")
    non2xx = _NON2XX.search(output)
    sock = _SOCKET.search(output)
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def run(
    port: int,
    host: str,
    duration: int,
    pin: Callable[[list[str]], list[str]],
    connections: int = 64,
    threads: int = 1,
) -> WrkResult:
    """`wrk -t1 -c64 -dNs -H "Host: HOST" http://127.0.0.1:PORT/`, as benchmarking.md."""
    seconds = max(1, duration)
    argv = pin(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-H",
            f"Host: {host}",
            f"http://{LOOPBACK}:{port}/",
        ]
    )
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 15, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {seconds + 15}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return parse(done.stdout)
