"""``gateway run``: start the engine, the admin listener and the reloader; drain on SIGTERM.

Shutdown order is uvicorn's and hypercorn's: readiness fails at once, then after
``drain_delay`` (time for the load balancer to notice) the listeners close, in-flight
requests get ``drain_timeout`` to finish, the rest are closed, exit 0. Signal handlers
only set a flag.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.accesslog import AccessLog
from gateway.admin import AdminApp
from gateway.config import LoadedConfig, listeners_of, parse_bind
from gateway.fast import FastEngine, engine_class
from gateway.metrics import WorkerStats
from gateway.reload import Reloader
from gateway.runtime import Runtime
from gateway.server import AiohttpEngine
from gateway.tls import TLSError, TLSManager
from gateway.tokens import TokensError

log = logging.getLogger("gateway")

# The engines `--engine` chooses from: same interface, same end-to-end tests.
Engine = AiohttpEngine | FastEngine
ENGINE_CLASSES: dict[str, type[Engine]] = {"aiohttp": AiohttpEngine, "fast": FastEngine}


@dataclass
class RunOptions:
    config_path: str
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9180"
    engine: str = "fast"
    drain_delay: float = 5.0
    drain_timeout: float = 20.0
    admin_tokens: str | None = None
    watch: bool = True
    access_log: str | None = None
    log_format: str = "auto"


class StartupError(Exception):
    """Raised for an unusable address or the like: ``gateway run`` exits 2."""


def local_stats(runtime: Runtime, engine: Engine) -> WorkerStats:
    return WorkerStats(
        counters=dict(zip(runtime.counters.keys, runtime.counters.values, strict=False)),
        histograms={
            env: (list(h.counts), h.total) for env, h in engine.forwarder.stats.histograms.items()
        },
        connections_open=dict(runtime.connections_open),
        in_flight=dict(runtime.in_flight),
    )


def _engine(runtime: Runtime, opts: RunOptions) -> tuple[Engine, TLSManager, AccessLog | None]:
    try:
        tls = TLSManager(runtime.snapshot.config, opts.listen)
    except TLSError as exc:
        raise StartupError(str(exc)) from None
    runtime.on_swap(lambda snap: tls.reload(snap.config))
    try:
        access_log = AccessLog(opts.access_log) if opts.access_log else None
    except OSError as exc:
        raise StartupError(f"--access-log {opts.access_log}: {exc.strerror or exc}") from None
    if opts.engine == "fast":
        fast, build = engine_class()
        # Which build runs is worth a line: the compiled one runs 12-34 % fewer
        # instructions per request (bench/RESULTS.md), and falls back silently otherwise.
        log.info("fast engine build=%s", build)
        return fast(runtime, access_log), tls, access_log
    return ENGINE_CLASSES[opts.engine](runtime, access_log), tls, access_log


async def _start_admin(
    opts: RunOptions,
    runtime: Runtime,
    reloader: Any,
    engine_name: str,
    stats: Callable[[], WorkerStats],
    extra_routes: Callable[[web.Application], None] | None = None,
    **admin_options: Any,
) -> web.AppRunner:
    try:
        admin_bind = parse_bind(opts.admin_listen)
    except ValueError as exc:
        raise StartupError(f"--admin-listen: {exc}") from None
    try:
        admin = AdminApp(
            runtime,
            reloader,
            engine_name,
            stats,
            admin_bind.host,
            admin_tokens=opts.admin_tokens,
            config_path=opts.config_path,
            **admin_options,
        )
    except TokensError as exc:
        raise StartupError(f"--admin-tokens: {exc}") from None
    if extra_routes is not None:
        extra_routes(admin.app)
    runner = web.AppRunner(admin.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, admin_bind.host, admin_bind.port, reuse_address=True)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on --admin-listen {opts.admin_listen}: {exc}") from None
    admin_addr = runner.addresses[0]
    log.info("listening listener=admin address=%s:%d", admin_addr[0], admin_addr[1])
    return runner


def _log_serving(runtime: Runtime, engine_name: str, workers: int = 1) -> None:
    log.info(
        "serving config sha256=%s environments=%d engine=%s workers=%d",
        runtime.snapshot.short_sha,
        len(runtime.snapshot.envs),
        engine_name,
        workers,
    )


def _start_background(runtime: Runtime) -> list[asyncio.Task[None]]:
    """A worker's periodic housekeeping: the refusal log's suppressed-lines summary and the
    top blocked hosts' fold (runtime.Runtime.note_blocked)."""
    loop = asyncio.get_running_loop()
    return [
        loop.create_task(runtime.refusal_log.run()),
        loop.create_task(runtime.fold_blocked_forever()),
    ]


def _stop_event(on_hup: Callable[[], None], access_log: AccessLog | None) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if access_log is not None:
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
    return stop


async def serve(opts: RunOptions, loaded: LoadedConfig) -> int:
    """One process: engine, admin listener and reloader on one event loop."""
    runtime = Runtime(loaded, opts.listen)
    gc.freeze()  # the startup snapshot is long-lived: keep it out of GC scans (see reload)
    engine, tls, access_log = _engine(runtime, opts)
    binds = {lst.name: parse_bind(lst.bind) for lst in listeners_of(loaded.config, opts.listen)}
    reloader = Reloader(runtime, opts.config_path)
    # Handlers first: a SIGHUP or SIGTERM during start-up must not kill the process.
    stop = _stop_event(reloader.trigger, access_log)
    try:
        await engine.start(binds, tls.contexts)
    except OSError as exc:
        await engine.shutdown(0)
        raise StartupError(f"cannot listen: {exc}") from None
    for name, (host, port) in engine.addresses.items():
        log.info("listening listener=%s address=%s:%d", name, host, port)
    try:
        runner = await _start_admin(
            opts, runtime, reloader, engine.name, lambda: local_stats(runtime, engine)
        )
    except StartupError:
        await engine.shutdown(0)
        raise
    _log_serving(runtime, engine.name)
    reloader.start(watch=opts.watch)
    background = _start_background(runtime)
    await stop.wait()

    log.info("draining: readiness failing, listeners close in %.1fs", opts.drain_delay)
    runtime.draining = True
    if opts.drain_delay > 0:
        await asyncio.sleep(opts.drain_delay)
    await engine.close_listeners()
    log.info("listeners closed; waiting up to %.1fs for in-flight requests", opts.drain_timeout)
    await engine.shutdown(opts.drain_timeout)
    for task in background:  # (after the drain: refusals are still counted during it)
        task.cancel()
    await reloader.stop()
    await runner.cleanup()
    if access_log is not None:
        access_log.close()
    log.info("stopped")
    return 0


def worker_args(opts: RunOptions) -> list[str]:
    args = [
        "--config", opts.config_path, "--listen", opts.listen, "--engine", opts.engine,
        "--drain-timeout", str(opts.drain_timeout),
    ]  # fmt: skip
    if not opts.watch:
        args.append("--no-watch")
    if opts.access_log:
        args += ["--access-log", opts.access_log]
    args += ["--log-format", "text" if opts.log_format == "text" else "json"]
    return args


async def serve_supervisor(opts: RunOptions, loaded: LoadedConfig, workers: int) -> int:
    """N worker processes on shared sockets; the admin listener sums their counters."""
    from gateway.supervisor import ClusterReloader, Supervisor, bind_sockets

    runtime = Runtime(loaded, opts.listen)
    try:
        TLSManager(loaded.config, opts.listen)  # fail now, not in every worker
        sockets = bind_sockets(loaded, opts.listen)
    except TLSError as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot listen: {exc}") from None
    reloader = Reloader(runtime, opts.config_path)
    sup = Supervisor(runtime, reloader, sockets, worker_args(opts), workers)
    cluster = ClusterReloader(sup)
    stop = _stop_event(cluster.trigger, None)  # before anything starts (see serve)

    async def workers_view(request: web.Request) -> web.Response:
        await sup.refresh()
        return web.json_response({"workers": sup.worker_view(), "replacements_s": sup.replacements})

    def routes(app: web.Application) -> None:
        app.router.add_get("/api/v1/workers", workers_view)

    async def blocked(environment: str | None, clear: bool) -> dict[str, list[dict[str, Any]]]:
        return await sup.blocked_hosts(environment, clear)

    runner = await _start_admin(
        opts,
        runtime,
        cluster,
        opts.engine,
        sup.stats,
        routes,
        blocked_source=blocked,
        before_scrape=sup.refresh,
    )
    try:
        await sup.start()
    except Exception:
        sup.kill_all()
        await runner.cleanup()
        raise
    for name, s in sockets.items():
        host, port = s.getsockname()[:2]
        log.info("listening listener=%s address=%s:%d", name, host, port)
    _log_serving(runtime, opts.engine, workers)
    # The supervisor watches too, so the admin API's view follows the file; workers watch
    # the file themselves, and SIGHUP reaches them through the supervisor.
    reloader.start(watch=opts.watch)
    await stop.wait()
    log.info(
        "draining %d workers: readiness failing, listeners close in %.1fs",
        workers,
        opts.drain_delay,
    )
    await sup.drain(opts.drain_delay, opts.drain_timeout)
    await reloader.stop()
    await runner.cleanup()
    log.info("stopped")
    return 0


async def serve_worker(
    opts: RunOptions, loaded: LoadedConfig, fds: dict[str, int], control: str
) -> int:
    """One worker under a supervisor: the engine on inherited sockets, a control socket."""
    import socket as socket_mod

    from gateway.supervisor import stats_to_json

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    runtime = Runtime(loaded, opts.listen)
    gc.freeze()
    engine, tls, access_log = _engine(runtime, opts)
    sockets = {name: socket_mod.socket(fileno=fd) for name, fd in fds.items()}
    binds = {lst.name: parse_bind(lst.bind) for lst in listeners_of(loaded.config, opts.listen)}
    reloader = Reloader(runtime, opts.config_path)
    stop = _stop_event(reloader.trigger, access_log)  # before anything starts (see serve)
    await engine.start(binds, tls.contexts, sockets)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"sha256": runtime.snapshot.sha256, "pid": os.getpid()})

    async def stats(request: web.Request) -> web.Response:
        body = b'{"sha256": "%s", "stats": %s}' % (
            runtime.snapshot.sha256.encode(),
            stats_to_json(local_stats(runtime, engine)),
        )
        return web.Response(body=body, content_type="application/json")

    async def reload(request: web.Request) -> web.Response:
        result = await reloader.reload()
        return web.json_response({"ok": result.ok, "sha256": runtime.snapshot.sha256})

    async def blocked(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            runtime.clear_blocked(request.query.get("environment"))
        return web.json_response(runtime.blocked_snapshot())

    app = web.Application()
    app.router.add_get("/blocked", blocked)
    app.router.add_delete("/blocked", blocked)
    app.router.add_get("/status", status)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reload", reload)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, control).start()
    reloader.start(watch=opts.watch)
    background = _start_background(runtime)
    await stop.wait()
    runtime.draining = True
    await engine.close_listeners()
    await engine.shutdown(opts.drain_timeout)
    for task in background:  # (after the drain: refusals are still counted during it)
        task.cancel()
    await reloader.stop()
    await runner.cleanup()
    if access_log is not None:
        access_log.close()
    return 0
