"""``gateway run --workers N``: one supervisor, N worker processes sharing the listeners.

The supervisor binds every listener once and hands the sockets to its workers (inherited
file descriptors, as nginx's master does), so a bind error stops the start with exit 2
before any worker exists, and port 0 works in tests. Each worker is a fresh interpreter
(``gateway worker``) running the same engine as the single-process mode, plus a small
control endpoint on a Unix socket: its counters, its config version, "reload now".

The supervisor owns the admin listener: ``/metrics`` sums the workers' counters (the hot
path in each worker stays plain integer arithmetic), and the numbers of a worker that
died are kept, so counters never go backwards. A dead worker is replaced at once; SIGHUP
reloads every worker; SIGTERM drains them all (readiness fails first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.config import LoadedConfig, listeners_of, parse_bind
from gateway.metrics import WorkerStats, merge
from gateway.reload import Reloader, ReloadResult
from gateway.runtime import Runtime

log = logging.getLogger("gateway.supervisor")
STATS_REFRESH_S = 0.5
WORKER_START_TIMEOUT_S = 30.0


def stats_to_json(stats: WorkerStats) -> bytes:
    return orjson.dumps(
        {
            "counters": [[f, list(labels), v] for (f, labels), v in stats.counters.items()],
            "histograms": {
                env: [counts, total] for env, (counts, total) in stats.histograms.items()
            },
            "connections_open": stats.connections_open,
            "in_flight": stats.in_flight,
        }
    )


def stats_from_json(raw: bytes) -> WorkerStats:
    doc = orjson.loads(raw)
    return WorkerStats(
        counters={(f, tuple(labels)): int(v) for f, labels, v in doc["counters"]},
        histograms={env: (list(c), float(t)) for env, (c, t) in doc["histograms"].items()},
        connections_open=dict(doc["connections_open"]),
        in_flight=dict(doc["in_flight"]),
    )


def bind_sockets(loaded: LoadedConfig, listen: str) -> dict[str, socket.socket]:
    """Bind every listener now, in the supervisor; OSError means exit 2."""
    out: dict[str, socket.socket] = {}
    try:
        for lst in listeners_of(loaded.config, listen):
            bind = parse_bind(lst.bind)
            family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind.host, bind.port))
            sock.listen(1024)
            sock.set_inheritable(True)
            out[lst.name] = sock
    except OSError:
        for s in out.values():
            s.close()
        raise
    return out


@dataclass
class Worker:
    index: int
    control: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    last_stats: WorkerStats = field(default_factory=WorkerStats)
    sha256: str = ""
    ready: bool = False


class Supervisor:
    def __init__(
        self,
        runtime: Runtime,
        reloader: Reloader,
        sockets: dict[str, socket.socket],
        worker_args: list[str],
        count: int,
    ) -> None:
        self.runtime = runtime
        self.reloader = reloader
        self.sockets = sockets
        self.worker_args = worker_args
        self.count = count
        self._dir = tempfile.mkdtemp(prefix="gateway-workers-")
        self.workers = [Worker(i, os.path.join(self._dir, f"w{i}.sock")) for i in range(count)]
        self.retired = WorkerStats()  # counts of workers that exited, so totals never drop
        self.draining = False
        self.replacements: list[float] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self, w: Worker) -> None:
        fds = ",".join(f"{name}={s.fileno()}" for name, s in self.sockets.items())
        args = [
            sys.executable, "-m", "gateway", "worker", *self.worker_args,
            "--fds", fds, "--control", w.control, "--worker-index", str(w.index),
        ]  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            os.unlink(w.control)
        w.proc = subprocess.Popen(
            args,
            pass_fds=[s.fileno() for s in self.sockets.values()],
            preexec_fn=_die_with_parent,
        )
        w.started = time.monotonic()
        w.ready = False
        log.info("worker %d started pid=%d", w.index, w.proc.pid)

    def _session_for(self, w: Worker) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=w.control))

    async def _query(self, w: Worker, method: str, path: str, timeout: float = 5.0) -> Any:
        async with (
            self._session_for(w) as s,
            s.request(
                method, f"http://worker{path}", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp,
        ):
            return orjson.loads(await resp.read())

    async def _wait_ready(self, w: Worker) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if w.proc is not None and w.proc.poll() is not None:
                return
            try:
                status = await self._query(w, "GET", "/status", timeout=1.0)
            except (TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05)
                continue
            w.sha256 = status["sha256"]
            w.ready = True
            return

    async def start(self) -> None:
        for w in self.workers:
            self._spawn(w)
        await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        failed = [w.index for w in self.workers if not w.ready]
        if failed:
            raise RuntimeError(f"workers {failed} did not start")
        self.runtime.listeners_up = True
        for coro in (self._monitor(), self._refresh_loop()):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _monitor(self) -> None:
        while not self.draining:
            await asyncio.sleep(0.1)
            for w in self.workers:
                if w.proc is None or w.proc.poll() is None or self.draining:
                    continue
                died = time.monotonic()
                log.error(
                    "worker %d pid=%d exited with %s; replacing it",
                    w.index,
                    w.proc.pid,
                    w.proc.returncode,
                )
                self.retired = merge([self.retired, _counters_only(w.last_stats)])
                w.last_stats = WorkerStats()
                self._spawn(w)
                await self._wait_ready(w)
                took = time.monotonic() - died
                self.replacements.append(took)
                log.info("worker %d replaced in %.2fs", w.index, took)

    async def _refresh_loop(self) -> None:
        while not self.draining:
            await self.refresh()
            await asyncio.sleep(STATS_REFRESH_S)

    async def refresh(self) -> None:
        async def one(w: Worker) -> None:
            if not w.ready:
                return
            try:
                raw = await self._query(w, "GET", "/stats", timeout=2.0)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                return
            w.last_stats = stats_from_json(orjson.dumps(raw["stats"]))
            w.sha256 = raw["sha256"]

        await asyncio.gather(*(one(w) for w in self.workers))

    def stats(self) -> WorkerStats:
        merged = merge([self.retired, *(w.last_stats for w in self.workers)])
        # Slots the supervisor's own runtime knows (reload counters, pre-created series).
        for key, value in zip(
            self.runtime.counters.keys, self.runtime.counters.values, strict=False
        ):
            merged.counters[key] = merged.counters.get(key, 0) + value
        return merged

    async def blocked_hosts(
        self, clear_env: str | None = None, clear: bool = False
    ) -> dict[str, list[dict[str, Any]]]:
        """The workers' top blocked hosts, merged (or cleared)."""
        from gateway.topk import merge_snapshots

        query = "" if clear_env is None else f"?environment={clear_env}"
        method = "DELETE" if clear else "GET"

        async def one(w: Worker) -> dict[str, list[dict[str, Any]]]:
            if not w.ready:
                return {}
            try:
                result: dict[str, list[dict[str, Any]]] = await self._query(
                    w, method, "/blocked" + query
                )
                return result
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                return {}

        return merge_snapshots(list(await asyncio.gather(*(one(w) for w in self.workers))))

    def worker_view(self) -> list[dict[str, Any]]:
        return [
            {
                "index": w.index,
                "pid": w.proc.pid if w.proc else None,
                "ready": w.ready,
                "config_sha256": w.sha256,
                "uptime_s": round(time.monotonic() - w.started, 1),
            }
            for w in self.workers
        ]

    # -- reload and drain -------------------------------------------------------------------

    async def reload_all(self, settle: bool = False, force: bool = False) -> ReloadResult:
        """Reload the supervisor's view, then every worker; answers once all are live."""
        result = await self.reloader.reload(settle=settle, force=force)
        want = self.runtime.snapshot.sha256

        async def one(w: Worker) -> None:
            if not w.ready:
                return
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                status = await self._query(w, "POST", "/reload", timeout=30.0)
                w.sha256 = status["sha256"]

        await asyncio.gather(*(one(w) for w in self.workers))
        behind = [w.index for w in self.workers if w.ready and w.sha256 != want]
        if behind and result.ok:
            return ReloadResult(
                False, result.changed, want, f"workers {behind} not live", result.seconds
            )
        return result

    async def drain(self, drain_delay: float, drain_timeout: float) -> None:
        self.draining = True
        self.runtime.draining = True
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        # Close the supervisor's copies first: the socket is really closed (new connections
        # refused) only once every process holding it has closed it.
        for s in self.sockets.values():
            s.close()
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_timeout + 5
        for w in self.workers:
            if w.proc is None:
                continue
            left = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(w.proc.wait, left)
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()
                await asyncio.to_thread(w.proc.wait)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def _die_with_parent() -> None:
    """A worker whose supervisor was killed (SIGKILL, OOM) must not serve on alone: Linux's
    PR_SET_PDEATHSIG sends it SIGTERM, which drains it like any stop."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop still works
        pass


def _counters_only(stats: WorkerStats) -> WorkerStats:
    # A dead worker's connections and in-flight requests are gone; its counts are not.
    return WorkerStats(counters=dict(stats.counters), histograms=dict(stats.histograms))


class ClusterReloader:
    """What the admin API calls to reload: the supervisor's reload of every worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def reload(self, settle: bool = False, force: bool = False) -> ReloadResult:
        return await self.supervisor.reload_all(settle=settle, force=force)

    def trigger(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self.supervisor._tasks.add(task)
        task.add_done_callback(self.supervisor._tasks.discard)

    async def _reload_logged(self) -> None:
        result = await self.reload(settle=True)
        if not result.ok:
            log.error("reload of all workers: %s", result.message)
