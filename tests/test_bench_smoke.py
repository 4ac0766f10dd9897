"""Keeps the benchmark harness (bench/, `make bench`) from rotting: a run of a few seconds
must produce results with positive figures for every system that started, a summary and
a chart, and leave no process behind. No timing assertions: the machine is shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import group_alive, run_bench_module

REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _gateway_runs() -> bool:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--help"],
            cwd=REPO,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def test_harness_smoke(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/ensure-apt.sh wrk:wrk)")
    have_nginx = os.access(NGINX, os.X_OK)
    if _gateway_runs():
        systems = ["gateway-aiohttp", "aiohttp-floor"]
    else:
        systems = ["nginx", "aiohttp-floor"] if have_nginx else ["aiohttp-floor"]
    out = tmp_path / "results"

    code, output = run_bench_module(
        "bench.harness", ["--smoke", "--systems", ",".join(systems), "--out", str(out)], 240
    )

    assert code == 0, output
    results: dict[str, Any] = json.loads((out / "latest.json").read_text())
    assert list(results["systems"]) == systems
    started = [name for name, s in results["systems"].items() if s["status"] == "ok"]
    assert started, output
    for name, state in results["systems"].items():
        if state["status"] != "ok":
            assert state["error"], f"{name} did not start and says nothing about it"
            continue
        measured = [s for s in results["scenarios"] if s not in state["skipped"]]
        assert measured, f"{name}: nothing measured: {state['skipped']}"
        for scenario in measured:
            figures = results["throughput"]["medians"][scenario][name]
            assert figures["median_rps"] > 0, (name, scenario, output)
            # The server's CPU time per request was read (/proc), and it did some work.
            assert figures["cpu_user_us"] + figures["cpu_sys_us"] > 0, (name, scenario)
            latency = results["latency"][scenario][name]
            assert "error" not in latency, (name, scenario, latency)
            assert latency["completed"] > 0 and latency["achieved_rate"] > 0
            assert latency["p50_ms"] > 0
    chart = out / "ratios.png"
    assert chart.stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "ratios.png" in summary
    for name in systems:
        assert name in summary
    # Every child (and anything it forked) is gone once the harness has returned.
    pids = [s["pid"] for s in results["systems"].values() if s["pid"]]
    pids += [results["upstream"]["pid"]] if results["upstream"].get("pid") else []
    leftovers = [pid for pid in pids if group_alive(pid)]
    assert not leftovers, f"process groups still alive: {leftovers}"


def test_instructions_per_request_smoke() -> None:
    """bench.instructions (make bench-instructions) reads valgrind's count: the bare
    sketch's refused path costs thousands of instructions, not zero and not millions."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed (scripts/ensure-apt.sh valgrind:valgrind)")
    from bench import instructions

    per_request = instructions.per_request("refused", "bare", 2000)
    assert 1_000 < per_request < 1_000_000


def test_group_cpu_counts_the_whole_process_group() -> None:
    from bench.proc import group_cpu

    before = group_cpu(os.getpgid(0))
    assert before is not None
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU in this group
        pass
    after = group_cpu(os.getpgid(0))
    assert after is not None
    assert after[0] + after[1] - before[0] - before[1] >= 0.2
    assert group_cpu(2**22 + 12345) is None  # no such group


def test_median_round_keeps_the_median_p99_and_every_rounds() -> None:
    from bench.harness import median_round

    def run(p99: float, held: bool = True) -> dict[str, object]:
        return {"p99_ms": p99, "p50_ms": p99 / 10, "held": held}

    got = median_round([run(35.0), run(1.2), run(1.9)])
    assert got["p99_ms"] == 1.9 and got["p50_ms"] == 0.19  # the whole median round
    assert got["p99_rounds_ms"] == [35.0, 1.2, 1.9]  # in the order they ran
    assert median_round([run(3.0), run(1.0)])["p99_ms"] == 1.0  # even: the lower middle
    # A round that did not hold the rate, or failed, is the verdict: not averaged away.
    assert median_round([run(1.0), run(900.0, held=False)])["held"] is False
    failed = median_round([{"error": "paced exited 1"}])
    assert failed["error"] == "paced exited 1" and failed["p99_rounds_ms"] == []


def test_sizing_smoke(tmp_path: Path) -> None:
    """bench.sizing (deploy/README.md, "Sizing"): a gateway on a generated allowlist, two
    full reloads awaited, RSS read after each."""
    from bench import sizing

    row = sizing.measure(200, 2, tmp_path)
    series = row["rss_mib"]
    assert isinstance(series, list) and len(series) == 3
    assert all(10 < value < 2_000 for value in series), series
    assert row["entries"] == 200 and int(str(row["json_bytes"])) > 200 * 20


def test_sizing_smoke_with_workers(tmp_path: Path) -> None:
    """bench.sizing --workers: the supervisor and its workers measured apart, each reload
    awaited in all three processes (the summed counter reaches 3 per reload)."""
    from bench import sizing

    row = sizing.measure(200, 2, tmp_path, workers=2)
    supervisor, worker = row["rss_mib"], row["worker_rss_mib"]
    assert isinstance(supervisor, list) and isinstance(worker, list)
    assert len(supervisor) == len(worker) == 3
    assert all(10 < value < 2_000 for value in supervisor + worker), (supervisor, worker)
