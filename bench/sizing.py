"""Memory of one gateway process against the allowlist's size, across full reloads: the
figures behind deploy/README.md's "Sizing".

For each size, the gateway (fast engine, one process) starts on a generated config of that
many entries (bench.reload_bench's shape, five environments), then the file is rewritten
``--reloads`` times with every entry changed, each reload awaited on
``gateway_config_reloads_total``; RSS is read after start and after each reload. A
reload holds two snapshots for a moment and the allocator keeps some of what it frees,
so RSS climbs over the first reloads and then stays flat: the steady figure is the last.

With ``--workers N`` the gateway runs as a supervisor and N workers (``gateway run
--workers N``). The supervisor compiles the allowlist too (it serves the admin API and
checks a new file before any worker sees it), so each process is measured apart: the
supervisor, and the largest worker. A reload counts as landed once the summed
``gateway_config_reloads_total`` shows it in the supervisor and in every worker.

    python -m bench.sizing 1000 10000 100000 --reloads 30
    python -m bench.sizing 100000 --reloads 30 --workers 2
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.proc import free_port
from bench.reload_bench import config_bytes, large_config

RELOADS_OK = re.compile(r'gateway_config_reloads_total\{result="success"\} (\S+)')


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _config(entries: int, tag: str, port: int) -> bytes:
    config = large_config(entries, "http://127.0.0.1:9", tag=tag)
    names = [env["name"] for env in config["environments"]]
    config["listeners"] = [{"name": "l", "bind": f"127.0.0.1:{port}", "environments": names}]
    return config_bytes(config)


def worker_pids(pid: int) -> list[int]:
    """The supervisor's child processes (its workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def measure(entries: int, reloads: int, workdir: Path, workers: int = 0) -> dict[str, object]:
    """RSS in MiB after start and after each full reload (of the single process, or of the
    supervisor and of the largest worker), and the file's size."""
    path = workdir / f"gateway-{entries}.json"
    port, admin = free_port(), free_port()
    path.write_bytes(_config(entries, "t0", port))
    argv = [sys.executable, "-m", "gateway", "run", "--config", str(path)]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", "--engine", "fast"]
    if workers:
        argv += ["--workers", str(workers)]
    # Each reload is counted once by the supervisor and once by every worker.
    per_reload = workers + 1 if workers else 1
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"http://127.0.0.1:{admin}/readyz")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start ({entries} entries)") from None
                time.sleep(0.1)
        time.sleep(1.0)
        if workers:
            while len(worker_pids(proc.pid)) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not start")
                time.sleep(0.1)

        def worker_rss() -> float:
            return max((rss_mib(w) for w in worker_pids(proc.pid)), default=0.0)

        series = [rss_mib(proc.pid)]
        wseries = [worker_rss()] if workers else []
        for k in range(1, reloads + 1):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_config(entries, f"t{k}", port))
            os.replace(tmp, path)  # atomically, as an editor or a ConfigMap update does
            deadline = time.monotonic() + 60
            while True:
                found = RELOADS_OK.search(_get(f"http://127.0.0.1:{admin}/metrics"))
                if found and float(found.group(1)) >= k * per_reload:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reload {k} did not land ({entries} entries)")
                time.sleep(0.05)
            time.sleep(0.5)  # the old snapshot is freed in steps after the swap
            series.append(rss_mib(proc.pid))
            line = f"  {entries:>7} entries  reload {k:>3}  RSS {series[-1]:7.1f} MiB"
            if workers:
                wseries.append(worker_rss())
                line += f" (supervisor), largest worker {wseries[-1]:7.1f} MiB"
            print(line, flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "entries": entries,
        "json_bytes": path.stat().st_size,
        "rss_mib": series,
        "worker_rss_mib": wseries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__)
    parser.add_argument("entries", nargs="+", type=int, help="allowlist sizes to measure")
    parser.add_argument("--reloads", type=int, default=30, help="full reloads per size (30)")
    parser.add_argument(
        "--workers", type=int, default=0, help="a supervisor and N workers (default: one process)"
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gateway-sizing-") as tmp:
        for entries in args.entries:
            rows.append(measure(entries, args.reloads, Path(tmp), args.workers))
    print("\n| entries | process | JSON | RSS after start | highest | after the last reload |")
    print("|---:|---|---:|---:|---:|---:|")
    for row in rows:
        kinds = [("supervisor" if args.workers else "single", "rss_mib")]
        if args.workers:
            kinds.append((f"largest of {args.workers} workers", "worker_rss_mib"))
        for kind, key in kinds:
            series = row[key]
            assert isinstance(series, list)
            print(
                f"| {row['entries']:,} | {kind} | {int(str(row['json_bytes'])) / 1024:,.0f} KiB "
                f"| {series[0]:.1f} MiB | {max(series):.1f} MiB | {series[-1]:.1f} MiB |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
