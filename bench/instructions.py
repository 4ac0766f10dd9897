"""CPU instructions per request, counted by valgrind (callgrind): a figure that does not move
with the machine's load.

Throughput and timing here move by 10–30 % from run to run (shared cores, a clock that
changes speed); an instruction count is the same for the same binary, input and code, so
two versions of the engine can be compared one change at a time even on a busy machine.
It runs ``bench.inprocess`` (the engine's own Python per request, fake transports, no
system calls) under ``valgrind --tool=callgrind`` twice, with ``--requests`` N and 3N,
and reports (count(3N) − count(N)) / (2N + …) per request: start-up, imports and the
warm-up cancel out. Kernel work (system calls) is not counted: it is the same for the
engine and the bare sketch.

    python -m bench.instructions                          # fast (compiled), fast-py, bare
    python -m bench.instructions --scenarios proxied --systems fast --requests 2000

Each run takes about half a minute under valgrind (two runs in parallel, one per core).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTED = re.compile(rb"Collected : (\d+)")


def count(scenario: str, system: str, requests: int) -> int:
    """Instructions of one ``bench.inprocess`` run (one rep of ``requests`` after a
    warm-up of ``min(2000, requests)``)."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.inprocess",
        "--scenarios",
        scenario,
        "--systems",
        system,
        "--requests",
        str(requests),
        "--reps",
        "1",
    ]
    # A fixed hash seed: str hashes (and so dict probing) otherwise differ run to run by
    # a few hundred instructions per request.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)
    found = COLLECTED.search(out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]!r}")
    return int(found.group(1))


def per_request(scenario: str, system: str, n: int) -> float:
    # Steps run: min(2000, n) + n for n, and 2000 + 3n for 3n (n >= 2000 keeps it simple).
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        small = pool.submit(count, scenario, system, n)
        large = pool.submit(count, scenario, system, 3 * n)
        return (large.result() - small.result()) / (2 * n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    p.add_argument("--scenarios", default="refused,proxied")
    p.add_argument("--systems", default="fast,fast-py,bare")
    p.add_argument("--requests", type=int, default=2000, help="N (at least 2000)")
    a = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    n = max(2000, a.requests)
    results: dict[tuple[str, str], float] = {}
    for scenario in a.scenarios.split(","):
        for system in a.systems.split(","):
            got = results[(scenario, system)] = per_request(scenario, system, n)
            print(f"{system:7} {scenario:8} {got:9,.0f} instructions per request", flush=True)
    for scenario in a.scenarios.split(","):
        bare = results.get((scenario, "bare"))
        for system in ("fast", "fast-py"):
            got = results.get((scenario, system))
            if got and bare:
                print(f"{scenario:8} {system} / bare = {got / bare:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
