"""Where a request's time goes: py-spy samples of a gateway engine under wrk load.

For each engine and scenario: the gateway pinned to core 0 (the nginx upstream and wrk on
core 1, as in the harness), wrk for ``--duration`` seconds while ``py-spy record`` samples
the gateway (non-blocking, so the target is never paused). Written to ``--out``:

- ``<engine>-<scenario>.collapsed.txt``: py-spy's raw collapsed stacks (load it into
  speedscope.app or flamegraph.pl for a picture);
- ``<engine>-<scenario>.md``: req/s, the gateway's CPU time per request (from
  /proc/PID/stat over the same window), and the functions by self and by inclusive time,
  each in µs per request (its share of the samples times the CPU time per request).

    python -m bench.profile_engine --engines aiohttp,fast --duration 10

Needs py-spy (``pip install py-spy``; the ``bench`` extra) and ptrace rights on the
gateway (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import wrk
from bench.proc import REPO_ROOT, ManagedProcess, Pinning
from bench.systems import SCENARIOS, SYSTEMS, UPSTREAM, Context, SystemState, start

_LINE_NO = re.compile(r":\d+\)$")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def summarise(collapsed: str, top: int = 30) -> tuple[Counter[str], Counter[str], int]:
    """(self samples, inclusive samples, total samples) per function, line numbers dropped
    so one function's lines add up."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE_NO.sub(")", f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return own, incl, total


def report(
    engine: str, scenario: str, rps: float, cpu_us: float, collapsed: str, top: int = 30
) -> str:
    own, incl, total = summarise(collapsed)
    lines = [
        f"# {engine} engine, {scenario} requests",
        "",
        f"wrk: {rps:,.0f} req/s; gateway CPU {cpu_us:.1f} µs per request "
        f"({total} py-spy samples while active).",
        "",
        "µs/request = share of samples × CPU time per request. Time in C (llhttp, uvloop,",
        "syscalls) counts to the Python function that called it.",
        "",
        "## By self time",
        "",
        "| µs/req | share | function |",
        "|---:|---:|---|",
    ]
    for name, n in own.most_common(top):
        lines.append(f"| {n / total * cpu_us:.2f} | {n / total:.1%} | `{name}` |")
    lines += ["", "## By inclusive time", "", "| µs/req | share | function |", "|---:|---:|---|"]
    for name, n in incl.most_common(top):
        lines.append(f"| {n / total * cpu_us:.2f} | {n / total:.1%} | `{name}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_engine", description=__doc__)
    p.add_argument(
        "--engines",
        default="aiohttp,fast",
        help="gateway engines, or harness system names (bare-protocol, nginx: CPU only)",
    )
    p.add_argument("--scenarios", default="refused,proxied")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "profiles")
    a = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(py_spy, os.X_OK):
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    pinning, note = Pinning.detect(True)
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    ctx = Context(run_dir, pinning)
    procs: list[ManagedProcess] = []
    try:
        up_state = SystemState("upstream", UPSTREAM.description)
        procs.append(start(UPSTREAM, ctx, pinning.client, up_state))
        ctx.upstream_port = up_state.port
        for engine in a.engines.split(","):
            spec = SYSTEMS.get(engine) or SYSTEMS[f"gateway-{engine}"]
            profiled = spec.name != "nginx"  # py-spy reads Python processes only
            state = SystemState(spec.name, spec.description)
            gw = start(spec, ctx, pinning.server, state)
            procs.append(gw)
            assert state.port is not None and gw.pid is not None
            for scenario in a.scenarios.split(","):
                host = SCENARIOS[scenario].host
                wrk.run(state.port, host, 2, pinning.client)  # warm up
                if scenario not in spec.scenarios:
                    continue
                raw = run_dir / f"{engine}-{scenario}.txt"
                spy_argv = (
                    [
                        py_spy, "record", "--pid", str(gw.pid), "--nonblocking",
                        "--gil", "--rate", str(a.rate), "--duration", str(a.duration),
                        "--format", "raw", "--output", str(raw),
                    ]
                    if profiled
                    else ["sleep", str(a.duration)]
                )  # fmt: skip
                spy = subprocess.Popen(
                    pinning.client(spy_argv),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(0.5)  # py-spy attached before the measured window
                cpu0 = cpu_seconds(gw.pid)
                res = wrk.run(state.port, host, a.duration - 1, pinning.client)
                cpu_us = (cpu_seconds(gw.pid) - cpu0) / max(1, res.requests) * 1e6
                spy.wait(a.duration + 30)
                if profiled:
                    collapsed = raw.read_text() if raw.exists() else ""
                    (a.out / f"{engine}-{scenario}.collapsed.txt").write_text(collapsed)
                    (a.out / f"{engine}-{scenario}.md").write_text(
                        report(engine, scenario, res.rps, cpu_us, collapsed)
                    )
                print(f"{engine:8} {scenario:8} {res.rps:>10,.0f} req/s  {cpu_us:6.1f} µs CPU/req")
            gw.stop()
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"wrote {a.out}; {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
