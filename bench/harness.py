"""Throughput and latency harness (issue 7); method as in design/benchmarking.md.

Starts on loopback the fast upstream (nginx, 1 worker) and every system under test, checks
that each does the job (one request per scenario), then:

1. peak throughput: `wrk -t1 -c64 -dN` per system and scenario, rounds interleaved
   (A B C A B C ...), the median per system, ratios against nginx, the aiohttp floor and
   the bare-protocol sketch, all from this run;
2. latency at a fixed rate: `bench.paced` (open loop) at the same rate for every system.

The server under test runs on one core, wrk / the paced client / the upstream on another.
Every system under test runs on that one core, so before each measurement the harness waits
(up to 15 s) for the core to go quiet: a system left working off a backlog (one that did not
hold the paced rate) would otherwise be measured inside the next system's figures.
A system that does not start is reported and the others are still measured.

    python -m bench.harness --rounds 5 --duration 5      # make bench
    python -m bench.harness --quick                      # make bench-quick, < 2 min
    python -m bench.harness --smoke --systems nginx      # a few seconds, for tests
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report, wrk
from bench.proc import REPO_ROOT, ManagedProcess, Pinning, StartError, group_cpu, settle
from bench.systems import (
    SCENARIOS,
    SYSTEMS,
    UPSTREAM,
    Context,
    SystemState,
    have_nginx,
    have_wrk,
    looks_unavailable,
    probe,
    start,
)

DEFAULT_OUT = REPO_ROOT / "bench" / "results"

# Profiles: values used for options the command line leaves unset.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        # Five: on this shared machine a system's rounds span up to 1.8x within one run,
        # and the median of three moved with a single bad round.
        "rounds": 5,
        "duration": 5,
        "warmup": 1,
        "paced_rate": 10000.0,
        "paced_duration": 5.0,
        "paced_grace": 2.0,
        "paced_rounds": 3,
    },
    # make bench-quick: about a minute for five systems.
    "quick": {
        "rounds": 2,
        "duration": 2,
        "warmup": 1,
        "paced_rate": 2000.0,
        "paced_duration": 2.0,
        "paced_grace": 1.0,
        "paced_rounds": 1,
    },
    # tests/test_bench_smoke.py: keep the harness from rotting, not measure anything.
    "smoke": {
        "rounds": 1,
        "duration": 1,
        "warmup": 0,
        "paced_rate": 500.0,
        "paced_duration": 1.0,
        "paced_grace": 1.0,
        "paced_rounds": 1,
    },
}


@dataclass
class Options:
    profile: str
    rounds: int
    duration: int
    warmup: int
    systems: list[str]
    scenarios: list[str]
    connections: int
    paced: bool
    paced_rate: float
    paced_duration: float
    paced_grace: float
    paced_rounds: int
    paced_connections: int
    pin: bool
    server_cpu: int
    client_cpu: int
    out: Path
    strict: bool
    keep_logs: bool


def _csv(allowed: list[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.harness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profile = p.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="short run (make bench-quick)")
    profile.add_argument("--smoke", action="store_true", help="a few seconds (the smoke test)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5)")
    # Whole seconds: wrk's -d takes nothing finer.
    p.add_argument("--duration", type=int, help="seconds of wrk per measurement (default 5)")
    p.add_argument("--warmup", type=int, help="seconds of wrk before round 1 (default 1, 0: none)")
    p.add_argument(
        "--systems",
        type=_csv(list(SYSTEMS)),
        default=[name for name, spec in SYSTEMS.items() if spec.default],
        help=f"comma-separated, of {','.join(SYSTEMS)} (default: all but "
        f"{','.join(name for name, spec in SYSTEMS.items() if not spec.default)})",
    )
    p.add_argument(
        "--scenarios",
        type=_csv(list(SCENARIOS)),
        default=list(SCENARIOS),
        help="comma-separated (default refused,proxied)",
    )
    p.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    p.add_argument("--no-paced", action="store_true", help="skip the fixed-rate latency pass")
    p.add_argument("--paced-rate", type=float, help="req/s for the latency pass (default 10000)")
    p.add_argument("--paced-duration", type=float, help="seconds per latency measurement")
    p.add_argument("--paced-grace", type=float, help="seconds to wait for late answers")
    p.add_argument(
        "--paced-rounds", type=int, help="latency rounds, interleaved; the median p99 is kept (3)"
    )
    p.add_argument("--paced-connections", type=int, default=64, help="paced pool size (64)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--server-cpu", type=int, default=0, help="core of the server under test")
    p.add_argument("--client-cpu", type=int, default=1, help="core of the client and upstream")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a system failed (not: unavailable)"
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and configs")
    a = p.parse_args(argv)
    name = "quick" if a.quick else "smoke" if a.smoke else "default"
    prof = PROFILES[name]

    def pick(key: str) -> Any:
        value = getattr(a, key)
        return prof[key] if value is None else value

    opts = Options(
        profile=name,
        rounds=pick("rounds"),
        duration=pick("duration"),
        warmup=pick("warmup"),
        systems=a.systems,
        scenarios=a.scenarios,
        connections=a.connections,
        paced=not a.no_paced,
        paced_rate=pick("paced_rate"),
        paced_duration=pick("paced_duration"),
        paced_grace=pick("paced_grace"),
        paced_rounds=pick("paced_rounds"),
        paced_connections=a.paced_connections,
        pin=not a.no_pin,
        server_cpu=a.server_cpu,
        client_cpu=a.client_cpu,
        out=a.out,
        strict=a.strict,
        keep_logs=a.keep_logs,
    )
    if opts.rounds < 1 or opts.duration < 1 or opts.warmup < 0:
        p.error("--rounds and --duration must be >= 1, --warmup >= 0")
    if opts.paced_rate <= 0 or opts.paced_duration <= 0 or opts.paced_grace < 0:
        p.error("--paced-rate and --paced-duration must be > 0, --paced-grace >= 0")
    if opts.paced_rounds < 1:
        p.error("--paced-rounds must be >= 1")
    return opts


def say(text: str) -> None:
    print(text, flush=True)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so that `finally` stops every child.
    say("SIGTERM: stopping the servers")
    raise SystemExit(128 + signum)


class Run:
    """One harness run: the processes it owns and what it has measured so far."""

    def __init__(self, opts: Options, run_dir: Path) -> None:
        self.opts = opts
        pinning, self.pin_note = Pinning.detect(opts.pin, opts.server_cpu, opts.client_cpu)
        self.pinning = pinning
        self.ctx = Context(run_dir, pinning)
        self.procs: dict[str, ManagedProcess] = {}
        self.states = {n: SystemState(n, SYSTEMS[n].description) for n in opts.systems}
        self.upstream: dict[str, Any] = {"status": "not_started"}
        self.samples: list[dict[str, Any]] = []
        self.latency: dict[str, dict[str, Any]] = {}

    # Lifecycle.

    def start_all(self) -> None:
        up_state = SystemState("upstream", UPSTREAM.description)
        needs_upstream = any(SCENARIOS[s].needs_upstream for s in self.opts.scenarios)
        if needs_upstream:
            try:
                self.procs["upstream"] = start(UPSTREAM, self.ctx, self.pinning.client, up_state)
                self.ctx.upstream_port = up_state.port
                self.upstream = {"status": "ok", "port": up_state.port, "pid": up_state.pid}
                say(f"upstream: nginx on port {up_state.port}")
            except StartError as exc:
                self.upstream = {"status": "failed", "error": str(exc), "pid": up_state.pid}
                say(f"upstream FAILED: {exc}")
        for name in self.opts.systems:
            self._start_one(name)

    def _start_one(self, name: str) -> None:
        state = self.states[name]
        spec = SYSTEMS[name]
        try:
            self.procs[name] = start(spec, self.ctx, self.pinning.server, state)
        except StartError as exc:
            state.error = str(exc)
            state.status = "unavailable" if looks_unavailable(state.error) else "failed"
            say(f"{name}: {state.status.upper()}: {_one_line(state.error)}")
            return
        state.status = "ok"
        for scenario_name in self.opts.scenarios:
            scenario = SCENARIOS[scenario_name]
            if scenario_name not in spec.scenarios:
                state.skipped[scenario_name] = "not applicable"
                continue
            if scenario.needs_upstream and self.ctx.upstream_port is None:
                state.skipped[scenario_name] = "no upstream"
                continue
            assert state.port is not None
            try:
                status, body = probe(state.port, scenario.host)
            except OSError as exc:
                state.skipped[scenario_name] = f"probe failed: {exc}"
                continue
            if status != scenario.expect_status:
                state.skipped[scenario_name] = (
                    f"probe: Host {scenario.host} got {status} {body.strip()[:60]!r}, "
                    f"expected {scenario.expect_status}"
                )
        measured = [s for s in self.opts.scenarios if s not in state.skipped]
        say(f"{name}: started on port {state.port} (pid {state.pid}); measuring {measured}")
        for scenario_name, why in state.skipped.items():
            if why != "not applicable":
                say(f"{name}: {scenario_name} NOT measured: {why}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def measurable(self, scenario: str) -> Iterator[str]:
        for name in self.opts.systems:
            state = self.states[name]
            if state.status == "ok" and scenario not in state.skipped:
                yield name

    def _died(self, name: str) -> bool:
        proc, state = self.procs[name], self.states[name]
        if state.status == "failed":
            return True
        code = proc.exit_code()
        if code is None:
            return False
        state.status = "failed"
        state.error = f"exited with code {code} during the run: {proc.log_tail()}"
        say(f"{name}: FAILED: {_one_line(state.error)}")
        return True

    # Measurements.

    def warm_up(self) -> None:
        if self.opts.warmup <= 0:
            return
        say(f"warm-up: {self.opts.warmup:g} s of wrk per system and scenario")
        for scenario in self.opts.scenarios:
            for name in list(self.measurable(scenario)):
                with contextlib.suppress(wrk.WrkError):
                    wrk.run(
                        self._port(name),
                        SCENARIOS[scenario].host,
                        self.opts.warmup,
                        self.pinning.client,
                        self.opts.connections,
                    )
                self._died(name)

    def throughput(self) -> None:
        total = self.opts.rounds
        for rnd in range(1, total + 1):
            for scenario in self.opts.scenarios:
                for name in list(self.measurable(scenario)):
                    sample = self._wrk_once(rnd, name, scenario)
                    self.samples.append(sample)
                    figure = (
                        f"{sample['rps']:>10,.0f} req/s"
                        if sample["valid"]
                        else f"DISCARDED ({sample['problem']})"
                    )
                    say(f"round {rnd}/{total}  {scenario:<8} {name:<16} {figure}")

    def _settle(self, name: str, what: str) -> float:
        if not self.pinning.enabled:
            return 0.0
        waited = settle(self.pinning.server_cpu)
        if waited >= 1.0:
            say(
                f"  (waited {waited:.1f} s for core {self.pinning.server_cpu} to go quiet"
                f" before {what} of {name})"
            )
        return round(waited, 2)

    def _wrk_once(self, rnd: int, name: str, scenario_name: str) -> dict[str, Any]:
        scenario = SCENARIOS[scenario_name]
        sample: dict[str, Any] = {"round": rnd, "system": name, "scenario": scenario_name}
        sample["settle_s"] = self._settle(name, f"wrk {scenario_name}")
        # The server's CPU time over the run, per request: how much of a request is the
        # system's own code (user) and how much the kernel's (system calls, TCP).
        pid = self.procs[name].pid
        cpu_before = group_cpu(pid) if pid is not None else None
        try:
            res = wrk.run(
                self._port(name),
                scenario.host,
                self.opts.duration,
                self.pinning.client,
                self.opts.connections,
            )
        except wrk.WrkError as exc:
            self._died(name)
            return {**sample, "rps": 0.0, "valid": False, "problem": str(exc)}
        sample.update(res.to_json())
        cpu_after = group_cpu(pid) if pid is not None else None
        if cpu_before is not None and cpu_after is not None and res.requests:
            sample["cpu_user_us"] = round((cpu_after[0] - cpu_before[0]) / res.requests * 1e6, 2)
            sample["cpu_sys_us"] = round((cpu_after[1] - cpu_before[1]) / res.requests * 1e6, 2)
        # wrk counts any answer as a request; check they were the right answers, or a
        # system answering 502 (or 200 to a refused host) would post a fine figure.
        refused = scenario.expect_status >= 400
        wrong = res.requests - res.non_2xx_3xx if refused else res.non_2xx_3xx
        problem = None
        if res.requests == 0:
            problem = "no requests completed"
        elif wrong > 0.01 * res.requests:
            problem = f"{wrong} of {res.requests} answers not {scenario.expect_status}-class"
        elif res.socket_errors > 0.01 * res.requests:
            problem = f"{res.socket_errors} socket errors"
        if self._died(name):
            problem = problem or "system exited"
        return {**sample, "valid": problem is None, "problem": problem}

    def paced(self) -> None:
        """Rounds interleaved like the throughput ones (A B C A B C ...); per system and
        scenario the round with the median p99 is reported, with every round's p99 beside
        it. One 5-second run is at the mercy of a pause of the shared machine (a 20 ms
        stall at 10,000 req/s delays 1 % of the requests behind it), which moves a single
        p99 by 10x here from run to run. A system that did not hold the rate is not run
        again: its verdict stands, and its backlog would only delay the next system."""
        o = self.opts
        say(
            f"latency: paced open loop at {o.paced_rate:,.0f} req/s for {o.paced_duration:g} s "
            f"over {o.paced_connections} connections, {o.paced_rounds} round(s)"
        )
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for rnd in range(1, o.paced_rounds + 1):
            for scenario in o.scenarios:
                for name in list(self.measurable(scenario)):
                    done = runs.setdefault(scenario, {}).setdefault(name, [])
                    if done and _verdict(done[-1]):
                        continue
                    result = self._paced_once(name, scenario)
                    result["round"] = rnd
                    done.append(result)
                    if "error" in result:
                        say(f"paced  {scenario:<8} {name:<16} ERROR {result['error']}")
                        continue
                    flag = "" if result["held"] else "  RATE NOT HELD"
                    say(
                        f"paced  {scenario:<8} {name:<16} round {rnd}  achieved "
                        f"{result['achieved_rate']:>8,.0f}/s  p50 {result['p50_ms']:.2f}  "
                        f"p99 {result['p99_ms']:.2f}  p99.9 {result['p999_ms']:.2f} ms{flag}"
                    )
        for scenario, by_system in runs.items():
            for name, results in by_system.items():
                self.latency.setdefault(scenario, {})[name] = median_round(results)

    def _paced_once(self, name: str, scenario: str) -> dict[str, Any]:
        o = self.opts
        argv = self.pinning.client(
            [
                self.ctx.python,
                "-m",
                "bench.paced",
                "--port",
                str(self._port(name)),
                "--host-header",
                SCENARIOS[scenario].host,
                "--rate",
                str(o.paced_rate),
                "--duration",
                str(o.paced_duration),
                "--grace",
                str(o.paced_grace),
                "--connections",
                str(o.paced_connections),
                "--json",
            ]
        )
        limit = o.paced_duration + o.paced_grace + 30
        waited = self._settle(name, f"paced {scenario}")
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=limit, cwd=REPO_ROOT, check=False
            )
        except subprocess.TimeoutExpired:
            return {"error": f"paced client did not finish within {limit:.0f}s"}
        self._died(name)
        if done.returncode != 0 or not done.stdout.strip():
            return {"error": f"paced exited {done.returncode}: {done.stderr.strip()[-300:]}"}
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["settle_s"] = waited
        return result

    def _port(self, name: str) -> int:
        port = self.states[name].port
        assert port is not None
        return port

    # Results.

    def results(self, started: str, args: dict[str, Any]) -> dict[str, Any]:
        meds = report.medians(self.samples)
        return {
            "schema": 1,
            "started": started,
            "finished": _now_iso(),
            "args": args,
            "pinning": self.pin_note,
            "machine": report.machine(),
            "scenarios": self.opts.scenarios,
            "scenario_hosts": {s: SCENARIOS[s].host for s in self.opts.scenarios},
            "systems_requested": self.opts.systems,
            "systems": {n: s.to_json() for n, s in self.states.items()},
            "upstream": self.upstream,
            "throughput": {
                "samples": self.samples,
                "medians": meds,
                "ratios": report.ratios(meds),
            },
            "latency": self.latency,
        }


def _verdict(result: dict[str, Any]) -> bool:
    """A latency round that settles its system's result: an error or a rate not held."""
    return "error" in result or not result["held"]


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median p99 (the lower middle of an even count), with every
    round's p99 under ``p99_rounds_ms``; an error or a rate not held is the result."""
    for r in results:
        if _verdict(r):
            return {**r, "p99_rounds_ms": [x["p99_ms"] for x in results if "error" not in x]}
    ranked = sorted(results, key=lambda r: r["p99_ms"])
    chosen = ranked[(len(ranked) - 1) // 2]
    return {**chosen, "p99_rounds_ms": [r["p99_ms"] for r in results]}


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if not have_wrk():
        say("wrk not found: install it (scripts/ensure-apt.sh wrk:wrk) — nothing measured")
        return 2
    if not have_nginx():
        say(
            "warning: /usr/sbin/nginx not found (scripts/ensure-apt.sh nginx:nginx-light): "
            "no nginx reference and no upstream, so no proxied scenario"
        )
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = _now_iso()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    t0 = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    run = Run(opts, run_dir)
    say(f"bench: profile {opts.profile}, systems {','.join(opts.systems)}; {run.pin_note}")
    try:
        run.start_all()
        run.warm_up()
        run.throughput()
        if opts.paced:
            run.paced()
    finally:
        run.stop_all()
        if opts.keep_logs:
            say(f"logs and configs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    args = {
        "profile": opts.profile,
        "rounds": opts.rounds,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "connections": opts.connections,
        "paced": opts.paced,
        "paced_rate": opts.paced_rate,
        "paced_duration": opts.paced_duration,
        "paced_grace": opts.paced_grace,
        "paced_rounds": opts.paced_rounds,
        "paced_connections": opts.paced_connections,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    results = run.results(started, args)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_at_end"] = report.loadavg()
    paths = report.write_all(results, opts.out, stamp)
    say(report.console_report(results))
    say("")
    say(f"wrote {', '.join(str(p) for p in paths.values())} in {results['elapsed_s']} s")
    measured = any(s.status == "ok" for s in run.states.values()) and bool(run.samples)
    if not measured:
        say("no system was measured")
        return 1
    if opts.strict and any(s.status == "failed" for s in run.states.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
