"""Hot-reload benchmark (issue 3): latency under load while a large allowlist is reloaded.

A benchmark, not a timed test: it measures and reports, and asserts nothing about timings.

    python -m bench.reload_bench [--entries 100000] [--interval 5] [--duration 30]
                                 [--rate 1000] [--trigger api|watch] [--quick]

What it does, on loopback, with the gateway pinned to core 0 and this process (the paced
client) and the upstream (nginx, one worker; the demo upstream when nginx is missing) on
core 1:

1. writes a config of ``--entries`` secure endpoints spread over 5 environments;
2. warm-up, then a baseline: the open-loop paced client (``bench.paced``) at ``--rate``
   for ``--duration`` seconds on an allowed host, no reloads;
3. the same again while the config is rewritten and reloaded every ``--interval`` seconds,
   alternating two variants: ``small`` (a handful of hosts added and removed: the usual
   change) and ``full`` (every entry rewritten: the worst case, nothing reusable);
4. after each reload, reads the gateway's own gauges from ``/metrics``:
   ``gateway_config_last_reload_duration_seconds`` (read + parse + validate + compile +
   swap) and ``gateway_config_last_reload_loop_stall_seconds`` (longest event-loop stall
   inside the gateway during that reload).

``--trigger api`` (default) runs the gateway with ``--no-watch`` and reloads through
``POST /api/v1/reload``, which answers once the new snapshot serves: the bench knows
exactly when each reload starts and ends. ``--trigger watch`` lets the file watcher pick
up the edit (the production path); its duration then includes the watcher's settle read
(two reads 0.1 s apart must agree), which is waiting, not compiling.

Targets (issue 3), reported but never asserted: reload under 0.5 s, longest stall under
50 ms, p99 with reloads at most 2x the baseline p99.

Results: ``bench/results/reload-<UTC stamp>.json``, ``reload-latest.json`` and the Markdown
fragment ``reload-summary.md`` (or ``--out DIR``).

The process and config helpers here (``start_gateway``, ``start_upstream``,
``large_config``, ``read_metrics``) are shared with the Locust runner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvloop

from bench import report
from bench.paced import PacedClient, PacedResult, percentile
from bench.proc import LOOPBACK, REPO_ROOT, ManagedProcess, Pinning, StartError, settle
from bench.systems import UPSTREAM, Context, SystemState, have_nginx
from bench.systems import start as start_system

RESULTS_DIR = REPO_ROOT / "bench" / "results"
ENVIRONMENTS = 5
# The host the load goes to: the first entry of env0, kept by every variant so that the
# same request is measured before, during and after each reload.
LOAD_HOST = "load.env0.example.com"
SMALL_CHANGE = 5  # hosts added and as many removed per environment in a `small` reload
TARGET_RELOAD_S = 0.5
TARGET_STALL_S = 0.050
TARGET_P99_RATIO = 2.0

LISTEN_RE = re.compile(r"listening listener=(\S+) address=(\S+):(\d+)")
SERVING_RE = re.compile(r"serving config sha256=")
METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)


def say(text: str) -> None:
    print(text, flush=True)


# -- config generation ---------------------------------------------------------------------


def env_hosts(env: int, per_env: int, tag: str, small: int = 0) -> list[str]:
    """Environment ``env``'s list: ``per_env`` names, all carrying ``tag`` (a new tag
    rewrites every entry). ``small`` > 0 is the k-th handful-of-hosts change on top of that
    list: a rotating slice of SMALL_CHANGE names replaced by as many new ones."""
    names = [f"h{i}.{tag}.env{env}.example.com" for i in range(per_env)]
    if env == 0 and names:
        names[0] = LOAD_HOST
    if small and per_env > 2 * SMALL_CHANGE:
        start = 1 + (small * SMALL_CHANGE) % (per_env - SMALL_CHANGE - 1)
        names[start : start + SMALL_CHANGE] = [
            f"added{small}-{j}.{tag}.env{env}.example.com" for j in range(SMALL_CHANGE)
        ]
    return names


def large_config(
    entries: int,
    upstream_url: str,
    tag: str = "base",
    small: int = 0,
    environments: int = ENVIRONMENTS,
    expose_config_version: bool = False,
) -> dict[str, Any]:
    """A config with ``entries`` secure endpoints in total over ``environments``
    environments (``env0`` .. ``envN``), all forwarding to ``upstream_url``."""
    per_env = max(1, entries // environments)
    return {
        "environments": [
            {
                "name": f"env{e}",
                "hostname": f"env{e}.internal.example",
                "secure_endpoints": env_hosts(e, per_env, tag, small),
                "upstreams": [upstream_url],
            }
            for e in range(environments)
        ],
        "expose_config_version": expose_config_version,
    }


def config_bytes(config: dict[str, Any]) -> bytes:
    # Formatted as the gateway's own writers (store.py) format it.
    return orjson.dumps(config, option=orjson.OPT_INDENT_2) + b"\n"


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: the gateway never reads half a
    file (that is the settle read's job for editors that do not do this)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- processes -------------------------------------------------------------------------------


def wait_log(proc: ManagedProcess, pattern: re.Pattern[str], timeout: float) -> str:
    """The child's log once ``pattern`` appears in it; StartError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = proc.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        if pattern.search(text):
            return text
        code = proc.exit_code()
        if code is not None:
            raise StartError(f"{proc.name} exited with code {code}: {proc.log_tail()}")
        if time.monotonic() > deadline:
            raise StartError(f"{proc.name}: {pattern.pattern!r} not seen in {timeout:.0f}s")
        time.sleep(0.05)


@dataclass
class GatewayProcess:
    proc: ManagedProcess
    config_path: Path
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return next(port for name, (_, port) in self.addresses.items() if name != "admin")

    @property
    def admin_url(self) -> str:
        host, port = self.addresses["admin"]
        return f"http://{host}:{port}"


def start_gateway(
    run_dir: Path,
    config_path: Path,
    pinning: Pinning,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
) -> GatewayProcess:
    """``gateway run`` on port 0 (no port race), addresses read back from its log."""
    argv = [
        sys.executable, "-m", "gateway", "run", "--config", str(config_path),
        "--listen", f"{LOOPBACK}:0", "--admin-listen", f"{LOOPBACK}:0", "--drain-delay", "0",
        *extra,
    ]  # fmt: skip
    proc = ManagedProcess("gateway", pinning.server(argv), run_dir)
    proc.start()
    gw = GatewayProcess(proc, config_path)
    try:
        text = wait_log(proc, SERVING_RE, timeout)
    except StartError:
        proc.stop()
        raise
    for m in LISTEN_RE.finditer(text):
        gw.addresses[m.group(1)] = (m.group(2), int(m.group(3)))
    return gw


def start_upstream(run_dir: Path, pinning: Pinning, kind: str) -> tuple[ManagedProcess, int, str]:
    """The upstream: ``nginx`` (1 worker, 200 ``ok``, fast) or ``demo`` (the gateway's echo
    upstream: slower, but answers with the headers it saw). (process, port, kind used)"""
    if kind == "nginx" and have_nginx():
        state = SystemState("upstream", UPSTREAM.description)
        proc = start_system(UPSTREAM, Context(run_dir, pinning), pinning.client, state)
        assert state.port is not None
        return proc, state.port, "nginx"
    argv = [sys.executable, "-m", "gateway.demo_upstream", "--port", "0", "--name", "bench"]
    proc = ManagedProcess("demo-upstream", pinning.client(argv), run_dir)
    proc.start()
    try:
        text = wait_log(proc, re.compile(r"listening 127\.0\.0\.1:(\d+)"), 30)
    except StartError:
        proc.stop()
        raise
    m = re.search(r"listening 127\.0\.0\.1:(\d+)", text)
    assert m is not None
    return proc, int(m.group(1)), "demo"


def read_metrics(admin_url: str, timeout: float = 10.0) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value}: enough for the few series read here."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return {m.group(1) + (m.group(2) or ""): float(m.group(3)) for m in METRIC_RE.finditer(text)}


def metric(metrics: dict[str, float], name: str) -> float:
    """Sum of every series of ``name`` (a gauge without labels is its one value)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def live_sha(metrics: dict[str, float]) -> str | None:
    for key in metrics:
        m = re.fullmatch(r'gateway_config_info\{sha256="([0-9a-f]+)"\}', key)
        if m:
            return m.group(1)
    return None


def post_reload(admin_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """``POST /api/v1/reload``: answers once the new snapshot serves (loopback callers
    may reload without a tokens file)."""
    req = urllib.request.Request(admin_url + "/api/v1/reload", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return round(int(m.group(1)) / 1024, 1) if m else None


# -- the measurement -----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    entries: int
    interval: float
    duration: float
    rate: float
    connections: int
    warmup: float
    trigger: str
    upstream: str
    pin: bool
    out: Path
    quick: bool
    keep: bool = False


@dataclass
class Variant:
    name: str  # small | full
    raw: bytes
    sha256: str
    entries: int


@dataclass
class ReloadRecord:
    index: int
    variant: str
    at_s: float  # since the start of the with-reloads phase
    client_s: float  # write start -> new config live, seen from the bench
    ok: bool
    duration_s: float | None = None  # the gateway's gauges, read after this reload
    stall_s: float | None = None
    entries: float | None = None
    error: str | None = None
    # absolute monotonic times (not written out): which requests were in flight
    window: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "variant": self.variant,
            "at_s": round(self.at_s, 3),
            "client_s": round(self.client_s, 4),
            "ok": self.ok,
            "duration_s": self.duration_s,
            "stall_s": self.stall_s,
            "entries": self.entries,
            "error": self.error,
        }


class TimedPacedClient(PacedClient):
    """The paced client, also keeping each answered request's due time, so that latency
    can be looked at for the requests that were due while a reload was running."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dues = array("d")  # in step with self.latencies

    def on_response(self, conn: Any, status: int, close: bool) -> None:
        # Read before the base class hands the connection its next request.
        self.dues.append(conn.due)
        super().on_response(conn, status, close)


def plan_variants(opts: Options, upstream_url: str, count: int) -> list[Variant]:
    """Every reload's file, built before the load starts: serialising 100k entries takes
    this process ~0.1 s, which would otherwise show up as client lag."""
    out = []
    full = 0
    for k in range(count):
        if k % 2 == 0:  # small first: the realistic case, from the base list
            name, tag, small = "small", f"r{full}" if full else "base", k + 1
        else:
            full += 1
            name, tag, small = "full", f"r{full}", 0
        raw = config_bytes(large_config(opts.entries, upstream_url, tag, small))
        out.append(Variant(name, raw, hashlib.sha256(raw).hexdigest(), opts.entries))
    return out


async def _reload_once(
    gw: GatewayProcess, variant: Variant, trigger: str
) -> tuple[bool, str | None]:
    await asyncio.to_thread(write_atomic, gw.config_path, variant.raw)
    if trigger == "api":
        body = await asyncio.to_thread(post_reload, gw.admin_url)
        if not body.get("ok") or body.get("config_sha256") != variant.sha256:
            return False, f"reload answered {body}"
        return True, None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # The watcher reloads by itself: poll until the new file's hash is the one serving.
        metrics = await asyncio.to_thread(read_metrics, gw.admin_url)
        if live_sha(metrics) == variant.sha256:
            return True, None
        await asyncio.sleep(0.02)
    return False, "the watcher did not apply the new file within 30 s"


async def _read_gauges(gw: GatewayProcess, variant: Variant, rec: ReloadRecord) -> None:
    metrics = await asyncio.to_thread(read_metrics, gw.admin_url)
    rec.duration_s = metric(metrics, "gateway_config_last_reload_duration_seconds")
    rec.stall_s = metric(metrics, "gateway_config_last_reload_loop_stall_seconds")
    rec.entries = metric(metrics, "gateway_allowlist_entries")
    if live_sha(metrics) != variant.sha256:
        # Another reload landed meanwhile: these gauges may be someone else's.
        rec.error = "the config serving is not the one written"


async def drive_reloads(
    gw: GatewayProcess, variants: list[Variant], opts: Options, t_start: float
) -> list[ReloadRecord]:
    records = []
    first = min(1.0, opts.interval / 2)  # the first reload after the client has settled
    for k, variant in enumerate(variants):
        await asyncio.sleep(max(0.0, t_start + first + k * opts.interval - time.monotonic()))
        t0 = time.monotonic()
        try:
            ok, error = await _reload_once(gw, variant, opts.trigger)
        except OSError as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        t1 = time.monotonic()
        rec = ReloadRecord(k, variant.name, t0 - t_start, t1 - t0, ok, error=error)
        # Requests due up to 50 ms after the swap still meet what the reload left behind
        # (the loop catching up, the collector's young-generation pass).
        rec.window = (t0, t1 + 0.05)
        if ok:
            try:
                await _read_gauges(gw, variant, rec)
            except OSError as exc:
                rec.error = f"/metrics: {type(exc).__name__}: {exc}"
        records.append(rec)
        say(
            f"  reload {k} {variant.name:<5} at {rec.at_s:5.1f}s: "
            + (
                f"gateway {_ms(rec.duration_s)} ms, stall {_ms(rec.stall_s)} ms, "
                f"bench saw {rec.client_s * 1000:.0f} ms"
                if ok
                else f"FAILED: {error}"
            )
        )
    return records


async def paced_phase(
    port: int, opts: Options, duration: float
) -> tuple[PacedResult, TimedPacedClient]:
    client = TimedPacedClient(LOOPBACK, port, LOAD_HOST, opts.rate, duration, opts.connections, 2.0)
    try:
        return await client.run(), client
    finally:
        client.close()


def window_stats(client: TimedPacedClient, records: list[ReloadRecord]) -> dict[str, Any]:
    """Latency of the requests that were due while a reload ran (see ReloadRecord.window)."""
    windows = [r.window for r in records if r.ok]
    values = sorted(
        lat
        for due, lat in zip(client.dues, client.latencies, strict=True)
        if any(a <= due <= b for a, b in windows)
    )
    ms = 1000.0
    return {
        "requests": len(values),
        "p50_ms": round(percentile(values, 0.50) * ms, 3) if values else None,
        "p99_ms": round(percentile(values, 0.99) * ms, 3) if values else None,
        "p999_ms": round(percentile(values, 0.999) * ms, 3) if values else None,
        "max_ms": round(values[-1] * ms, 3) if values else None,
    }


def slowest_by_reload(
    client: TimedPacedClient, records: list[ReloadRecord], share: float = 0.01
) -> list[dict[str, float | None]]:
    """Where the slowest ``share`` of requests fell: each one's due time relative to the
    start of the reload nearest before it, beside that reload's length as the bench saw
    it. Tells a slow step inside a reload from something after it (freeing the old
    snapshot, a first request on a new pool) or unrelated to reloads."""
    starts = sorted((r.window[0], r.window[1]) for r in records if r.ok)
    pairs = sorted(zip(client.latencies, client.dues, strict=True), reverse=True)
    out: list[dict[str, float | None]] = []
    for lat, due in pairs[: max(1, int(len(pairs) * share))]:
        before = [(a, b) for a, b in starts if a <= due]
        a, b = before[-1] if before else (None, None)
        out.append(
            {
                "latency_ms": round(lat * 1000, 2),
                "due_after_reload_start_ms": None if a is None else round((due - a) * 1000, 1),
                "reload_ms": None if a is None or b is None else round((b - a) * 1000, 1),
            }
        )
    return out


async def measure_all(
    gw: GatewayProcess, variants: list[Variant], opts: Options, server_cpu: int | None
) -> dict[str, Any]:
    waits: dict[str, float] = {}

    async def quiet(phase: str) -> None:
        # As bench.harness: the gateway's core is left to go quiet before each phase, so
        # that other work sharing it (a test suite, another benchmark) shows as a wait in
        # the results rather than as a p99 ratio.
        if server_cpu is not None:
            waits[phase] = round(await asyncio.to_thread(settle, server_cpu), 2)
            if waits[phase] > 1.0:
                say(f"  waited {waits[phase]:.1f} s for core {server_cpu} to go quiet")

    if opts.warmup > 0:
        say(f"warm-up: {opts.warmup:g} s at {opts.rate:,.0f} req/s")
        await paced_phase(gw.port, opts, opts.warmup)
    await quiet("baseline")
    say(f"baseline: {opts.duration:g} s at {opts.rate:,.0f} req/s, no reloads")
    baseline, base_client = await paced_phase(gw.port, opts, opts.duration)
    say(f"  {_paced_line(baseline)}")
    say(
        f"with reloads: {opts.duration:g} s at {opts.rate:,.0f} req/s, "
        f"{len(variants)} reloads every {opts.interval:g} s ({opts.trigger})"
    )
    await quiet("with_reloads")
    t_start = time.monotonic()
    driver = asyncio.ensure_future(drive_reloads(gw, variants, opts, t_start))
    try:
        loaded, client = await paced_phase(gw.port, opts, opts.duration)
        records = await driver
    finally:
        if not driver.done():
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
    say(f"  {_paced_line(loaded)}")
    return {
        "baseline": {**baseline.to_json(), **silences(base_client)},
        "with_reloads": {
            **loaded.to_json(),
            **silences(client),
            "reload_windows": window_stats(client, records),
            "slowest": slowest_by_reload(client, records),
        },
        "reloads": [r.to_json() for r in records],
        "settle_s": waits,  # seconds waited for the gateway's core to go quiet, per phase
    }


def silences(client: TimedPacedClient) -> dict[str, float]:
    """Telling a stall of the gateway from one of the machine: the longest time no answer
    arrived (while requests were due every millisecond), and the longest this process was
    late sending. A long silence with a small client lag, in the baseline, is the gateway
    or its core stopping, not a reload; with a long client lag the whole machine paused."""
    done = sorted(due + lat for due, lat in zip(client.dues, client.latencies, strict=True))
    gap = max((b - a for a, b in itertools.pairwise(done)), default=0.0)
    return {
        "longest_silence_ms": round(gap * 1000, 1),
        "client_lag_max_ms": round(max(client.lags, default=0.0) * 1000, 1),
    }


# -- results ---------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _paced_line(r: PacedResult) -> str:
    held = "held" if r.held else "NOT HELD"
    return (
        f"achieved {r.achieved_rate:,.0f}/s ({held}), p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, "
        f"p99.9 {r.p999_ms} ms, max {r.max_ms} ms, errors {r.errors}, statuses {r.statuses}"
    )


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    base, loaded = results["baseline"], results["with_reloads"]
    per_variant: dict[str, Any] = {}
    for name in ("small", "full"):
        recs = [r for r in results["reloads"] if r["variant"] == name and r["ok"]]
        durations = [r["duration_s"] for r in recs if r["duration_s"] is not None]
        stalls = [r["stall_s"] for r in recs if r["stall_s"] is not None]
        per_variant[name] = {
            "reloads": len(recs),
            "duration_median_s": statistics.median(durations) if durations else None,
            "duration_max_s": max(durations) if durations else None,
            "stall_median_s": statistics.median(stalls) if stalls else None,
            "stall_max_s": max(stalls) if stalls else None,
        }
    ratio = loaded["p99_ms"] / base["p99_ms"] if base["p99_ms"] else None
    window_p99 = loaded["reload_windows"]["p99_ms"]
    window_ratio = window_p99 / base["p99_ms"] if window_p99 and base["p99_ms"] else None
    all_durations = [v["duration_max_s"] for v in per_variant.values() if v["duration_max_s"]]
    all_stalls = [v["stall_max_s"] for v in per_variant.values() if v["stall_max_s"]]
    failed = [r for r in results["reloads"] if not r["ok"]]
    return {
        "p99_ratio": round(ratio, 3) if ratio else None,
        "reload_window_p99_ratio": round(window_ratio, 3) if window_ratio else None,
        "variants": per_variant,
        "failed_reloads": len(failed),
        "targets": {
            "reload_under_s": TARGET_RELOAD_S,
            "stall_under_s": TARGET_STALL_S,
            "p99_ratio_at_most": TARGET_P99_RATIO,
            # Reported, not asserted (issue 3: a benchmark, not a timed test).
            "reload_met": bool(all_durations) and max(all_durations) < TARGET_RELOAD_S,
            "stall_met": bool(all_stalls) and max(all_stalls) < TARGET_STALL_S,
            "p99_ratio_met": ratio is not None and ratio <= TARGET_P99_RATIO,
        },
    }


def _rows(results: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    base, loaded = results["baseline"], results["with_reloads"]
    win = loaded["reload_windows"]
    s = results["summary"]
    latency = [
        ["baseline (no reloads)", f"{base['achieved_rate']:,.0f}",
         str(base["p50_ms"]), str(base["p99_ms"]), str(base["p999_ms"]), str(base["max_ms"]),
         str(base.get("longest_silence_ms", ""))],
        ["with reloads (whole phase)", f"{loaded['achieved_rate']:,.0f}",
         str(loaded["p50_ms"]), str(loaded["p99_ms"]), str(loaded["p999_ms"]),
         str(loaded["max_ms"]), str(loaded.get("longest_silence_ms", ""))],
        [f"  requests due during reloads ({win['requests']})", "",
         str(win["p50_ms"]), str(win["p99_ms"]), str(win["p999_ms"]), str(win["max_ms"]), ""],
        ["p99 ratio (with / without)", "", "", _ratio(s["p99_ratio"]), "", "", ""],
        ["p99 ratio (reload windows / without)", "", "", _ratio(s["reload_window_p99_ratio"]),
         "", "", ""],
    ]  # fmt: skip
    reloads = []
    for name, v in s["variants"].items():
        reloads.append(
            [
                name,
                str(v["reloads"]),
                _ms(v["duration_median_s"]),
                _ms(v["duration_max_s"]),
                _ms(v["stall_median_s"]),
                _ms(v["stall_max_s"]),
            ]
        )
    return latency, reloads


def warnings(results: dict[str, Any]) -> list[str]:
    """Reasons not to believe this run's figures."""
    out = []
    for phase in ("baseline", "with_reloads"):
        r = results[phase]
        if not r["held"]:
            out.append(
                f"{phase}: the rate was not held ({r['achieved_rate']:,.0f} of "
                f"{r['target_rate']:,.0f} req/s, {r['errors']} errors): the gateway or this "
                "machine is saturated, latencies are queueing; lower --rate or find a quieter "
                "moment"
            )
        # Ten times the longest stall the targets allow, and no reload was running.
        if phase == "baseline" and r["longest_silence_ms"] > 10 * TARGET_STALL_S * 1000:
            who = (
                "this machine paused (the client was late too)"
                if r["client_lag_max_ms"] > r["longest_silence_ms"] / 2
                else "the gateway or its core stopped (the client was not late)"
            )
            out.append(
                f"baseline: no answer for {r['longest_silence_ms']:,.0f} ms with no reload "
                f"running: {who}; this run's percentiles measure that, rerun"
            )
        bad = {k: v for k, v in r["statuses"].items() if k != "200"}
        if bad:
            out.append(f"{phase}: answers other than 200: {bad}")
    load = results["machine"]["loadavg_at_start"].split()[0]
    with contextlib.suppress(ValueError):
        # Over the minute before the start, on a 2-core machine: something else ran.
        if float(load) > 1.5:
            out.append(f"load average {load} at the start: something else was running")
    return out


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


LATENCY_HEAD = ["phase", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "no answer for ms"]
RELOAD_HEAD = ["variant", "reloads", "duration med ms", "max ms", "stall med ms", "max ms"]


def _targets_line(results: dict[str, Any]) -> str:
    t = results["summary"]["targets"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return (
        f"targets: reload < {TARGET_RELOAD_S:g} s {mark(t['reload_met'])}; "
        f"stall < {TARGET_STALL_S * 1000:g} ms {mark(t['stall_met'])}; "
        f"p99 ratio <= {TARGET_P99_RATIO:g}x {mark(t['p99_ratio_met'])}"
    )


def _setup_line(results: dict[str, Any]) -> str:
    o = results["options"]
    return (
        f"{o['entries']:,} entries over {ENVIRONMENTS} environments "
        f"({results['config_bytes']:,} bytes), reload every {o['interval']:g} s "
        f"({o['trigger']}), {o['rate']:,.0f} req/s for {o['duration']:g} s per phase over "
        f"{o['connections']} connections, upstream {results['upstream']}; {results['pinning']}"
    )


def console_report(results: dict[str, Any]) -> str:
    latency, reloads = _rows(results)
    return "\n".join(
        [
            "",
            _setup_line(results),
            "",
            report.text_table(LATENCY_HEAD, latency),
            "",
            report.text_table(RELOAD_HEAD, reloads),
            "",
            _targets_line(results),
        ]
    )


def summary_markdown(results: dict[str, Any]) -> str:
    latency, reloads = _rows(results)
    m = results["machine"]
    return "\n".join(
        [
            f"### Hot reload under load ({results['started']})",
            "",
            _setup_line(results) + ".",
            "",
            report.md_table(LATENCY_HEAD, latency),
            "",
            "Reload cost, from the gateway's own gauges after each reload "
            "(`gateway_config_last_reload_duration_seconds`: read + parse + validate + "
            "compile + swap; `gateway_config_last_reload_loop_stall_seconds`: longest "
            "event-loop stall during it). `small`: a handful of hosts added and removed per "
            "environment; `full`: every entry rewritten.",
            "",
            report.md_table(RELOAD_HEAD, reloads),
            "",
            _targets_line(results) + " (reported, not asserted).",
            "",
            f"Machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, "
            f"load {m['loadavg_at_start']} at start, {results['loadavg_at_end']} at end; "
            f"gateway RSS {results['gateway_rss_mb']['start']} MB -> "
            f"{results['gateway_rss_mb']['end']} MB. Absolute figures drift by 30 % or more "
            "between runs on shared machines; the ratios within one run hold better.",
            "",
        ]
    )


def write_results(results: dict[str, Any], out: Path, stamp: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    paths = [out / f"reload-{stamp}.json", out / "reload-latest.json", out / "reload-summary.md"]
    for path, content in zip(paths, (text, text, summary_markdown(results)), strict=True):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    return paths


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.reload_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--entries", type=int, help="secure endpoints in total (100000)")
    p.add_argument("--interval", type=float, help="seconds between reloads (5)")
    p.add_argument("--duration", type=float, help="seconds per phase (30)")
    p.add_argument("--rate", type=float, help="paced client req/s (1000)")
    p.add_argument("--connections", type=int, default=32, help="client keep-alive pool (32)")
    p.add_argument("--warmup", type=float, help="seconds of load before the baseline (3)")
    p.add_argument("--trigger", choices=("api", "watch"), default="api")
    p.add_argument("--upstream", choices=("nginx", "demo"), default="nginx")
    p.add_argument("--no-pin", action="store_true", help="do not pin to cores 0 and 1")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument(
        "--keep", action="store_true", help="keep the run directory (gateway log, configs)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: 5000 entries, 1 s interval, 3 s phases, 300 req/s (smoke test)",
    )
    a = p.parse_args(argv)
    # Explicit options win over the profile's defaults.
    defaults = (
        {"entries": 5000, "interval": 1.0, "duration": 3.0, "rate": 300.0, "warmup": 0.5}
        if a.quick
        # 1,000 req/s: about half of what the gateway forwards on one shared core here, so
        # the baseline is not already queueing (2,000 often was not held).
        else {"entries": 100_000, "interval": 5.0, "duration": 30.0, "rate": 1000.0, "warmup": 3.0}
    )
    values = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in defaults.items()}
    if values["entries"] < ENVIRONMENTS * (2 * SMALL_CHANGE + 2):
        p.error(f"--entries must be at least {ENVIRONMENTS * (2 * SMALL_CHANGE + 2)}")
    if values["interval"] <= 0 or values["duration"] <= 0 or values["rate"] <= 0:
        p.error("--interval, --duration and --rate must be positive")
    return Options(
        entries=int(values["entries"]),
        interval=float(values["interval"]),
        duration=float(values["duration"]),
        rate=float(values["rate"]),
        connections=a.connections,
        warmup=float(values["warmup"]),
        trigger=a.trigger,
        upstream=a.upstream,
        pin=not a.no_pin,
        out=a.out,
        quick=a.quick,
        keep=a.keep,
    )


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # An exception, so that `finally` stops every child.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    pinning, pin_note = Pinning.detect(opts.pin)
    if pinning.enabled:
        # This process is the paced client: it shares the client core with the upstream.
        os.sched_setaffinity(0, {pinning.client_cpu})
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-reload-bench-"))
    procs: list[ManagedProcess] = []
    machine = report.machine()
    try:
        up_proc, up_port, up_kind = start_upstream(run_dir, pinning, opts.upstream)
        procs.append(up_proc)
        upstream_url = f"http://{LOOPBACK}:{up_port}"
        say(f"reload bench: {pin_note}; upstream {up_kind} on port {up_port} (pid {up_proc.pid})")
        config_path = run_dir / "config.json"
        base = config_bytes(large_config(opts.entries, upstream_url))
        write_atomic(config_path, base)
        extra = ["--no-watch"] if opts.trigger == "api" else []
        gw = start_gateway(run_dir, config_path, pinning, extra)
        procs.append(gw.proc)
        say(
            f"gateway: port {gw.port}, admin {gw.admin_url}, {opts.entries:,} entries "
            f"(pid {gw.proc.pid})"
        )
        count = max(1, int((opts.duration - min(1.0, opts.interval / 2)) // opts.interval) + 1)
        variants = plan_variants(opts, upstream_url, count)
        # The bench's own garbage collector must not pause the client mid-measurement:
        # everything built so far is long-lived.
        gc.collect()
        gc.freeze()
        rss_start = rss_mb(gw.proc.pid)
        server_cpu = pinning.server_cpu if pinning.enabled else None
        measured = uvloop.run(measure_all(gw, variants, opts, server_cpu))
        rss_end = rss_mb(gw.proc.pid)
        if gw.proc.exit_code() is not None:
            raise StartError(f"the gateway exited during the run: {gw.proc.log_tail()}")
    except StartError as exc:
        say(f"reload bench FAILED: {exc}")
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        if opts.keep:
            say(f"kept the run directory {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    results: dict[str, Any] = {
        "benchmark": "reload",
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "options": {
            "entries": opts.entries,
            "environments": ENVIRONMENTS,
            "interval": opts.interval,
            "duration": opts.duration,
            "rate": opts.rate,
            "connections": opts.connections,
            "warmup": opts.warmup,
            "trigger": opts.trigger,
            "quick": opts.quick,
            "load_host": LOAD_HOST,
        },
        "upstream": up_kind,
        "pinning": pin_note,
        "config_bytes": len(base),
        "machine": machine,
        "loadavg_at_end": report.loadavg(),
        "gateway_rss_mb": {"start": rss_start, "end": rss_end},
        "pids": {"upstream": up_proc.pid, "gateway": gw.proc.pid},
        **measured,
    }
    results["summary"] = summarise(results)
    paths = write_results(results, opts.out, started.strftime("%Y%m%dT%H%M%SZ"))
    say(console_report(results))
    for note in warnings(results):
        say(f"WARNING: {note}")
    say(f"\nwrote {', '.join(str(p) for p in paths)} in {results['elapsed_s']} s")
    return 1 if results["summary"]["failed_reloads"] else 0


if __name__ == "__main__":
    sys.exit(main())
