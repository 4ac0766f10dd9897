"""Memory: per idle connection, and RSS over a long run at peak load.

1. Idle connections. The gateway (pinned as in the harness) gets N connections that sit
   idle, first fresh (accepted, nothing sent: what a slowloris or a load balancer's
   pre-opened pool costs), then kept alive after one request each (a browser's idle
   keep-alive connection). Memory per connection = growth of the process's RSS / N; the
   kernel's socket memory is not in RSS and is reported apart (sockstat, whole machine).
   Deadlines are raised for the measurement so that nothing is closed under it.
2. Peak load. wrk at full speed for ``--duration`` seconds, refused and proxied requests
   at once (two wrk processes on the client core), RSS sampled every second. After a
   warm-up (the first 10 %), RSS must stay within 10 % (max over min), and its trend is
   reported in MiB per minute, so a slow leak shows even within the band.

    python -m bench.memory --duration 600               # the full 10-minute run
    python -m bench.memory --short                      # ~1 minute, for development
    python -m bench.memory --engines fast,aiohttp --idle 5000 --no-load

Results are printed and written to ``bench/results/memory-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.proc import LOOPBACK, REPO_ROOT, ManagedProcess, Pinning, free_port
from bench.systems import ALLOWED_HOST, REFUSED_HOST, UPSTREAM, Context, SystemState, start

DEFAULT_OUT = REPO_ROOT / "bench" / "results"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sockstat_tcp_pages() -> int:
    """Pages of memory the kernel holds for TCP sockets (all processes)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            return int(parts[parts.index("mem") + 1])
    return 0


def open_metric(admin: str, listener: str) -> float:
    with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("gateway_connections_open{") and f'listener="{listener}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class Gateway:
    def __init__(
        self, engine: str, ctx: Context, pin: Pinning, upstream_port: int, run_dir: Path
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        config = {
            "environments": [
                {
                    "name": "bench",
                    "hostname": "bench.example",
                    "secure_endpoints": [ALLOWED_HOST],
                    "upstreams": [f"http://{LOOPBACK}:{upstream_port}"],
                }
            ],
            "listeners": [
                {
                    "name": "bench",
                    "bind": f"{LOOPBACK}:{self.port}",
                    "environments": ["bench"],
                    "default_environment": "bench",
                }
            ],
            # Nothing idle is closed while it is measured.
            "timeouts": {"header_s": 3600, "keepalive_s": 3600},
            "limits": {"max_connections": 100_000},
        }
        path = run_dir / f"memory-{engine}.json"
        path.write_text(json.dumps(config))
        argv = pin.server(
            [
                sys.executable, "-m", "gateway", "run", "--config", str(path),
                "--admin-listen", f"{LOOPBACK}:{self.admin_port}", "--engine", engine,
                "--no-watch",
            ]
        )  # fmt: skip
        self.proc = ManagedProcess(f"gateway-{engine}", argv, run_dir)
        self.proc.start()
        self.proc.wait_ready(self.port, 30)
        self.admin = f"http://{LOOPBACK}:{self.admin_port}"
        assert self.proc.pid is not None
        self.pid = self.proc.pid


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, want))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def idle_connections(gw: Gateway, n: int, keepalive: bool) -> dict[str, Any]:
    """Open n connections; with ``keepalive`` each first completes one request."""
    for _ in range(20):  # warm: code paths, the pools
        with socket.create_connection((LOOPBACK, gw.port)) as s:
            s.sendall(
                f"GET / HTTP/1.1\r\nHost: {ALLOWED_HOST}\r\nConnection: close\r\n\r\n".encode()
            )
            while s.recv(65536):
                pass
    time.sleep(1.0)
    before = rss_kib(gw.pid)
    kernel_before = sockstat_tcp_pages()
    socks: list[socket.socket] = []
    request = f"GET / HTTP/1.1\r\nHost: {ALLOWED_HOST}\r\n\r\n".encode()
    try:
        for _ in range(n):
            s = socket.create_connection((LOOPBACK, gw.port))
            if keepalive:
                s.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"ok\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            socks.append(s)
        deadline = time.monotonic() + 30
        while open_metric(gw.admin, "bench") < n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        after = rss_kib(gw.pid)
        kernel_after = sockstat_tcp_pages()
    finally:
        for s in socks:
            s.close()
    page = resource.getpagesize()
    return {
        "connections": n,
        "kind": "keep-alive after one request" if keepalive else "fresh, nothing sent",
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "bytes_per_connection": round((after - before) * 1024 / n),
        # Both ends of each loopback connection are counted here.
        "kernel_tcp_bytes_per_connection_pair": round((kernel_after - kernel_before) * page / n),
    }


def peak_load(gw: Gateway, pin: Pinning, duration: int) -> dict[str, Any]:
    """Two wrk processes at full speed (refused and proxied) while RSS is sampled."""
    procs = [
        subprocess.Popen(
            pin.client(
                [
                    "wrk", "-t1", "-c32", f"-d{duration}s", "--timeout", "5s",
                    "-H", f"Host: {host}", f"http://{LOOPBACK}:{gw.port}/",
                ]
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for host in (REFUSED_HOST, ALLOWED_HOST)
    ]  # fmt: skip
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs):
        samples.append((time.monotonic() - t0, rss_kib(gw.pid)))
        time.sleep(1.0)
    outputs = [p.communicate()[0] for p in procs]
    requests = []
    for out in outputs:
        for line in out.splitlines():
            if "requests in" in line:
                requests.append(int(line.split()[0]))
    steady = [s for s in samples if s[0] >= duration * 0.1] or samples
    values = [kib / 1024 for _, kib in steady]
    lo, hi = min(values), max(values)
    # Least-squares slope, MiB per minute, over the steady part.
    xs = [t for t, _ in steady]
    slope = 0.0
    if len(xs) > 2:
        mx, my = statistics.fmean(xs), statistics.fmean(values)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / den * 60
    return {
        "duration_s": duration,
        "requests": {
            "refused": requests[0] if requests else 0,
            "proxied": requests[-1] if len(requests) > 1 else 0,
        },
        "rss_first_mib": round(values[0], 1),
        "rss_last_mib": round(values[-1], 1),
        "rss_min_mib": round(lo, 1),
        "rss_max_mib": round(hi, 1),
        "spread_pct": round((hi - lo) / lo * 100, 2),
        "trend_mib_per_min": round(slope, 3),
        "flat_within_10pct": (hi - lo) / lo <= 0.10,
        "samples_mib": [round(kib / 1024, 1) for _, kib in samples],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--engines", default="fast,aiohttp")
    p.add_argument("--idle", type=int, default=5000, help="idle connections (default 5000)")
    p.add_argument("--duration", type=int, default=600, help="peak-load seconds (600)")
    p.add_argument("--short", action="store_true", help="1000 idle, 60 s of load")
    p.add_argument("--no-load", action="store_true", help="idle connections only")
    p.add_argument("--no-idle", action="store_true", help="peak load only")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    if a.short:
        a.idle, a.duration = min(a.idle, 1000), min(a.duration, 60)
    if shutil.which("wrk") is None and not a.no_load:
        print("wrk not found (scripts/ensure-apt.sh wrk:wrk)", file=sys.stderr)
        return 2
    limit = raise_nofile(a.idle + 256)
    if limit < a.idle + 256:
        a.idle = limit - 256
        print(f"open files limited to {limit}: {a.idle} idle connections", file=sys.stderr)
    pinning, note = Pinning.detect(True)
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-memory-"))
    ctx = Context(run_dir, pinning)
    results: dict[str, Any] = {"pinning": note, "engines": {}}
    upstream: ManagedProcess | None = None
    try:
        state = SystemState("upstream", UPSTREAM.description)
        upstream = start(UPSTREAM, ctx, pinning.client, state)
        assert state.port is not None
        for engine in a.engines.split(","):
            out: dict[str, Any] = {}
            if not a.no_idle:
                # Each measurement in a fresh process: memory freed by one (pymalloc keeps
                # its arenas) would make the next look cheaper than it is.
                for key, keepalive in (("idle_fresh", False), ("idle_keepalive", True)):
                    gw = Gateway(engine, ctx, pinning, state.port, run_dir)
                    try:
                        r = out[key] = idle_connections(gw, a.idle, keepalive)
                    finally:
                        gw.proc.stop()
                    print(
                        f"{engine:8} {r['connections']} idle ({r['kind']}): "
                        f"{r['bytes_per_connection']:,} B/connection of RSS "
                        f"({r['rss_before_mib']} -> {r['rss_after_mib']} MiB); kernel "
                        f"{r['kernel_tcp_bytes_per_connection_pair']:,} B per pair",
                        flush=True,
                    )
            if not a.no_load:
                gw = Gateway(engine, ctx, pinning, state.port, run_dir)
                try:
                    print(f"{engine:8} peak load for {a.duration} s ...", flush=True)
                    r = out["peak_load"] = peak_load(gw, pinning, a.duration)
                finally:
                    gw.proc.stop()
                print(
                    f"{engine:8} RSS {r['rss_min_mib']}-{r['rss_max_mib']} MiB "
                    f"(spread {r['spread_pct']} %, trend {r['trend_mib_per_min']} MiB/min, "
                    f"{'flat' if r['flat_within_10pct'] else 'NOT flat'} within 10 %) over "
                    f"{r['requests']['refused'] + r['requests']['proxied']:,} requests",
                    flush=True,
                )
            results["engines"][engine] = out
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = a.out / f"memory-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
