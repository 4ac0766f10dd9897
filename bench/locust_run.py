"""Run the Locust suite (``bench/locustfile.py``) against a real gateway: ``make bench-locust``.

    python -m bench.locust_run [--scenario standard|large|all] [--users 20] [--duration 60]
                               [--operator-interval 3,5] [--smoke]

For each scenario: start the demo upstream (it answers with the headers it saw) and the
gateway (``expose_config_version`` on, an admin tokens file, file watching on), then run
``locust --headless`` in a process of its own (gevent patches the standard library, which
this process must not be), pinned to core 1 with the upstream while the gateway has core 0.

Scenarios: ``standard`` (5 environments, every entry form: exact, ``host:port``, wildcard,
IPv4, IPv6, hostname-only) and ``large`` (100,000 entries over 5 environments, as in
``bench.reload_bench``). ``--smoke`` is what ``tests/test_locust_smoke.py`` runs: standard,
10 s, 8 users, a change every 1-2 s by each operator.

Writes Locust's CSV (``<out>/locust-<scenario>_stats.csv`` ...), each scenario's check
report (``<out>/locust-<scenario>-checks.json``), the gateway's log
(``<out>/locust-<scenario>-gateway.log``) and ``<out>/locust-latest.json``; prints a
summary. Exit 1 when any response was a wrong decision or a wrong forward, or nothing ran.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.proc import LOOPBACK, REPO_ROOT, ManagedProcess, Pinning, StartError
from bench.reload_bench import (
    RESULTS_DIR,
    config_bytes,
    large_config,
    metric,
    read_metrics,
    start_gateway,
    start_upstream,
    write_atomic,
)
from bench.systems import probe

LOCUSTFILE = REPO_ROOT / "bench" / "locustfile.py"


def say(text: str) -> None:
    print(text, flush=True)


def standard_config(upstream_url: str) -> dict[str, Any]:
    """Five environments using every form of entry the contract defines (bar Unicode,
    which the unit tests cover): what the suite's users and scanners aim at."""
    envs = [
        ("production", "acme-prod.example.net",
         ["www.acme.com", "acme.com", "api.acme.com", "pay.acme.com:8443", "*.shop.acme.com",
          "12.34.56.78", "[2001:db8::1]"]),
        ("staging", "acme-stg.example.net",
         ["stg.acme.com", "*.stg.acme.com", "preview.acme.com:8080"]),
        ("eu", "acme-eu.example.net", ["www.acme.eu", "acme.eu", "*.cdn.acme.eu"]),
        ("partners", "partners.example.net",
         ["partner-a.example.org", "partner-b.example.org", "[2001:db8::beef]:8443"]),
        ("internal", "tools.internal.example", []),  # only its hostname gets in
    ]  # fmt: skip
    return {
        "environments": [
            {"name": n, "hostname": h, "secure_endpoints": e, "upstreams": [upstream_url]}
            for n, h, e in envs
        ],
        "expose_config_version": True,
    }


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...]
    users: int
    spawn_rate: float
    duration: int
    operator_interval: str
    entries: int
    out: Path
    pin: bool
    keep_logs: bool


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.locust_run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario", choices=("standard", "large", "all"), default="all")
    p.add_argument("--users", type=int, help="Locust users, operators included (20)")
    p.add_argument("--spawn-rate", type=float, help="users started per second (= users)")
    p.add_argument("--duration", type=int, help="seconds per scenario (60)")
    p.add_argument("--operator-interval", help="MIN,MAX seconds between changes (3,5)")
    p.add_argument("--entries", type=int, default=100_000, help="large scenario size")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--no-pin", action="store_true", help="do not pin to cores 0 and 1")
    p.add_argument("--keep-logs", action="store_true", help="keep logs and configs, say where")
    p.add_argument("--smoke", action="store_true", help="standard, 10 s, 8 users, changes 1-2 s")
    a = p.parse_args(argv)
    # (users, seconds, operator interval): explicit options win over the profile.
    d_users, d_duration, d_interval = (8, 10, "1,2") if a.smoke else (20, 60, "3,5")
    users: int = a.users or d_users
    scenario = "standard" if a.smoke and a.scenario == "all" else a.scenario
    interval: str = a.operator_interval or d_interval
    try:
        lo, _, hi = interval.partition(",")
        if not 0 < float(lo) <= float(hi or lo):
            raise ValueError
    except ValueError:
        p.error("--operator-interval must be MIN,MAX seconds, 0 < MIN <= MAX")
    if users < 3:
        p.error("--users must be at least 3 (two operators and one user)")
    return Options(
        scenarios=("standard", "large") if scenario == "all" else (scenario,),
        users=users,
        spawn_rate=a.spawn_rate or float(users),
        duration=a.duration or d_duration,
        operator_interval=interval,
        entries=a.entries,
        out=a.out,
        pin=not a.no_pin,
        keep_logs=a.keep_logs,
    )


def make_token(run_dir: Path) -> tuple[str, Path]:
    """A fresh admin token and the tokens file holding its hash (``gateway token``)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--name", "locust-operator", "--role",
         "admin", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    made = json.loads(done.stdout)
    path = run_dir / "admin-tokens.json"
    path.write_text(json.dumps([made["entry"]]) + "\n")
    return str(made["token"]), path


def read_stats_csv(prefix: Path) -> dict[str, dict[str, Any]]:
    """Locust's ``<prefix>_stats.csv`` rows by ``Type Name`` (``Aggregated`` for the total)."""
    rows: dict[str, dict[str, Any]] = {}
    path = prefix.with_name(prefix.name + "_stats.csv")
    if not path.exists():
        return rows
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = row["Name"] if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}"
            rows[key] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "median_ms": float(row["Median Response Time"] or 0),
                "p99_ms": float(row.get("99%") or 0) if row.get("99%") != "N/A" else None,
            }
    return rows


def run_scenario(name: str, opts: Options, pinning: Pinning) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"gateway-locust-{name}-"))
    procs: list[ManagedProcess] = []
    prefix = opts.out / f"locust-{name}"
    checks_path = opts.out / f"locust-{name}-checks.json"
    checks_path.unlink(missing_ok=True)
    result: dict[str, Any] = {"scenario": name}
    try:
        token, tokens_path = make_token(run_dir)
        up, up_port, _ = start_upstream(run_dir, pinning, "demo")
        procs.append(up)
        upstream_url = f"http://{LOOPBACK}:{up_port}"
        if name == "large":
            config = large_config(opts.entries, upstream_url, expose_config_version=True)
        else:
            config = standard_config(upstream_url)
        config_path = run_dir / "config.json"
        write_atomic(config_path, config_bytes(config))
        gw = start_gateway(run_dir, config_path, pinning, ["--admin-tokens", str(tokens_path)])
        procs.append(gw.proc)
        hostname = config["environments"][0]["hostname"]
        status, body = probe(gw.port, hostname)
        if status != 200:
            raise StartError(f"probe of {hostname}: {status} {body!r}, expected 200")
        say(f"[{name}] gateway port {gw.port}, admin {gw.admin_url}, upstream {up_port}")
        os.environ.update(
            {
                # Read by bench/locustfile.py in the Locust process (inherited).
                "GW_CONFIG_PATH": str(config_path),
                "GW_ADMIN_URL": gw.admin_url,
                "GW_ADMIN_TOKEN": token,
                "GW_OPERATOR_INTERVAL": opts.operator_interval,
                "GW_LOCUST_REPORT": str(checks_path),
            }
        )
        argv = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(opts.users), "-r", str(opts.spawn_rate), "-t", f"{opts.duration}s",
            "--csv", str(prefix), "--host", f"http://{LOOPBACK}:{gw.port}",
            "--only-summary", "--stop-timeout", "2",
        ]  # fmt: skip
        say(
            f"[{name}] locust: {opts.users} users for {opts.duration} s, operators change "
            f"the allowlist every {opts.operator_interval.replace(',', '-')} s"
        )
        locust = ManagedProcess(f"locust-{name}", pinning.client(argv), run_dir)
        procs.append(locust)
        locust.start()
        code = _wait(locust, opts.duration + 90)
        result["locust_exit"] = code
        result["locust_log_tail"] = locust.log_tail(4000)
        say(result["locust_log_tail"])
        metrics = read_metrics(gw.admin_url)
        result["gateway_reloads"] = {
            "success": metric(metrics, 'gateway_config_reloads_total{result="success"}'),
            "failure": metric(metrics, 'gateway_config_reloads_total{result="failure"}'),
        }
        if gw.proc.exit_code() is not None:
            raise StartError(f"the gateway exited during the run: {gw.proc.log_tail()}")
    except (StartError, OSError, subprocess.SubprocessError, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(f"[{name}] FAILED: {result['error']}")
    finally:
        for proc in reversed(procs):
            proc.stop()
        result["pids"] = [p.pid for p in procs if p.pid]
        # Kept with the results: reload timings and admin writes explain slow moments.
        for proc in procs:
            if proc.name == "gateway" and proc.log_path.exists():
                shutil.copyfile(proc.log_path, opts.out / f"locust-{name}-gateway.log")
        if opts.keep_logs:
            say(f"[{name}] logs and config kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    result["stats"] = read_stats_csv(prefix)
    result["checks"] = json.loads(checks_path.read_text()) if checks_path.exists() else None
    return result


def _wait(proc: ManagedProcess, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.exit_code()
        if code is not None:
            return code
        time.sleep(0.2)
    say(f"{proc.name} did not finish within {timeout:.0f} s: stopping it")
    return None


def totals(result: dict[str, Any]) -> dict[str, Any]:
    """Locust's final totals: from the check report (written at exit), else its CSV."""
    checks = result.get("checks") or {}
    if "locust" in checks:
        return dict(checks["locust"])
    return dict(result["stats"].get("Aggregated", {"requests": 0, "failures": 0, "rps": 0.0}))


def verdict(result: dict[str, Any]) -> list[str]:
    """Why this scenario fails (empty: it passed)."""
    problems = []
    if "error" in result:
        problems.append(result["error"])
    checks = result.get("checks")
    if not totals(result).get("requests"):
        problems.append("no requests were made")
    if checks is None:
        problems.append("the Locust process wrote no check report")
        return problems
    for key in ("wrong_decisions", "wrong_forwards", "no_version_header"):
        if checks.get(key):
            problems.append(f"{checks[key]} {key.replace('_', ' ')}")
    if not checks.get("checks"):
        problems.append("no response was checked")
    return problems


def summary_line(result: dict[str, Any]) -> str:
    total = totals(result)
    c = result.get("checks") or {}
    ops = c.get("operators", {})
    reloads = result.get("gateway_reloads", {})
    return (
        f"{result['scenario']}: {total['requests']:,} requests, {total['failures']:,} failures, "
        f"{total['rps']:,.0f} req/s, median {total.get('median_ms', '?')} ms, p99 "
        f"{total.get('p99_ms', '?')} ms, max {total.get('max_ms', '?')} ms | "
        f"checked {c.get('checks', 0):,}: "
        f"wrong decisions {c.get('wrong_decisions', '?')}, wrong forwards "
        f"{c.get('wrong_forwards', '?')}, upstream errors {c.get('upstream_errors', '?')}, "
        f"judged late {c.get('deferred', 0)}, unverified {c.get('unverified', 0)} | "
        f"allowlist changes: file {ops.get('file_changes', 0)}, API {ops.get('api_changes', 0)}"
        f" (412 conflicts {ops.get('api_conflicts', 0)}), versions seen in responses "
        f"{c.get('versions_seen', 0)} | gateway reloads ok {reloads.get('success', 0):.0f}, "
        f"failed {reloads.get('failure', 0):.0f}"
    )


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that `finally` stops every child


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    pinning, pin_note = Pinning.detect(opts.pin)
    opts.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    say(f"locust suite: scenarios {', '.join(opts.scenarios)}; {pin_note}")
    results = [run_scenario(name, opts, pinning) for name in opts.scenarios]
    say("")
    failed = False
    for res in results:
        res["problems"] = verdict(res)
        failed |= bool(res["problems"])
        say(summary_line(res))
        for problem in res["problems"]:
            say(f"  FAIL: {problem}")
        for example in (res.get("checks") or {}).get("examples", [])[:5]:
            say(f"  e.g. {example}")
    doc = {
        "benchmark": "locust",
        "started": started,
        "options": {
            "users": opts.users,
            "spawn_rate": opts.spawn_rate,
            "duration": opts.duration,
            "operator_interval": opts.operator_interval,
            "entries_large": opts.entries,
        },
        "pinning": pin_note,
        "machine": report.machine(),
        "scenarios": {r["scenario"]: {k: v for k, v in r.items() if k != "locust_log_tail"}
                      for r in results},
    }  # fmt: skip
    latest = opts.out / "locust-latest.json"
    latest.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"wrote {latest} and Locust's CSV files {opts.out}/locust-<scenario>_*.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
