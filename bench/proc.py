"""Child processes for the harness: free ports, CPU pinning, start, readiness, cleanup.

Every child runs in its own process group so that stopping it also stops whatever it
forked (nginx workers, gateway workers); the harness always stops children in `finally`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Children run from the repository root so that `python -m bench.floor` and
# `python -m gateway` resolve to this checkout whatever the caller's directory.
REPO_ROOT = Path(__file__).resolve().parent.parent

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A child did not come up; the message says why (exit code, log tail)."""


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, read it back, close).

    There is a small window in which someone else may take it; `start_with_retry`
    callers retry once with a new port when a child reports "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Pinning:
    """Which core the server under test and the load side (client, upstream) get.

    Pinning keeps the client from competing with the server for one core, which is
    what makes the ratios between systems measured in one run comparable.
    """

    enabled: bool
    server_cpu: int = 0
    client_cpu: int = 1

    @classmethod
    def detect(cls, want: bool, server_cpu: int = 0, client_cpu: int = 1) -> tuple[Pinning, str]:
        """Pinning if asked for and possible, plus a note saying what was decided."""
        if not want:
            return cls(False, server_cpu, client_cpu), "pinning disabled (--no-pin)"
        if shutil.which("taskset") is None:
            return cls(False, server_cpu, client_cpu), "taskset not found (util-linux): unpinned"
        allowed = os.sched_getaffinity(0)
        if server_cpu not in allowed or client_cpu not in allowed or server_cpu == client_cpu:
            note = (
                f"cores {server_cpu},{client_cpu} not both available ({sorted(allowed)}): unpinned"
            )
            return cls(False, server_cpu, client_cpu), note
        note = f"server on core {server_cpu}, client and upstream on core {client_cpu}"
        return cls(True, server_cpu, client_cpu), note

    def server(self, argv: Sequence[str]) -> list[str]:
        return self._wrap(self.server_cpu, argv)

    def client(self, argv: Sequence[str]) -> list[str]:
        return self._wrap(self.client_cpu, argv)

    def _wrap(self, cpu: int, argv: Sequence[str]) -> list[str]:
        # taskset execs the program, so the pid we hold is the program's own.
        return ["taskset", "-c", str(cpu), *argv] if self.enabled else list(argv)


def _die_with_parent() -> None:
    """Runs in the child before exec: if the harness is killed outright (SIGKILL, so no
    `finally`), the kernel kills its direct children too instead of leaving servers
    holding ports and cores."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ManagedProcess:
    """One long-running child (a server) with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                process_group=0,
                preexec_fn=_die_with_parent,
            )

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def wait_ready(self, port: int, timeout: float) -> None:
        """Poll a TCP connect until it succeeds; fail fast if the child exits."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.exit_code()
            if code is not None:
                raise StartError(f"{self.name} exited with code {code}: {self.log_tail()}")
            if port_open(port):
                return
            if time.monotonic() > deadline:
                raise StartError(
                    f"{self.name} did not accept connections on port {port} "
                    f"within {timeout:.0f}s: {self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, limit: int = 1500) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        text = data[-limit:].decode("utf-8", "replace").strip()
        return text or "(empty log)"

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM the group, wait up to `grace`, then SIGKILL the group regardless so that
        no grandchild (an nginx worker, a gateway worker) outlives its leader."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # process_group=0 makes the child its own group leader
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def group_alive(pgid: int) -> bool:
    """Whether any process is still in process group `pgid` (used by the smoke test)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Before each measurement the server core is left to go quiet: every system runs on that
# core, and one that could not keep up (the aiohttp engine does not hold the paced rate
# proxied) goes on working off its backlog after its own measurement, inside the next
# system's. Waited for: the core busy under SETTLE_BUSY over a SETTLE_WINDOW_S window, for
# at most SETTLE_TIMEOUT_S (then measured anyway, and the wait recorded).
SETTLE_BUSY = 0.10
SETTLE_WINDOW_S = 0.2
SETTLE_TIMEOUT_S = 15.0


def core_times(cpu: int) -> tuple[int, int] | None:
    """(total, idle) jiffies of one core from /proc/stat; None where there is none."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return None
    prefix = f"cpu{cpu} "
    for line in text.splitlines():
        if line.startswith(prefix):
            f = [
                int(x) for x in line.split()[1:9]
            ]  # user nice system idle iowait irq softirq steal
            return sum(f), f[3] + f[4]
    return None


def group_cpu(pgid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of every process in process group ``pgid`` (a server
    and its workers: each system under test runs in its own group); None where there is
    no /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    found = False
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # After the command's ")" (which may itself hold spaces): state, ppid, pgrp, ...,
        # utime and stime at 11 and 12 (proc(5) fields 14 and 15).
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            found = True
            user += int(fields[11])
            system += int(fields[12])
    return (user / tick, system / tick) if found else None


def settle(cpu: int) -> float:
    """Wait until core ``cpu`` is quiet (see SETTLE_BUSY); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        before = core_times(cpu)
        time.sleep(SETTLE_WINDOW_S)
        after = core_times(cpu)
        if before is None or after is None:
            break
        total = after[0] - before[0]
        if total <= 0 or 1 - (after[1] - before[1]) / total < SETTLE_BUSY:
            break
    return time.monotonic() - started
