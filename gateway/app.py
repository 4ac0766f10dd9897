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
import signal
from dataclasses import dataclass

from aiohttp import web

from gateway.accesslog import AccessLog
from gateway.admin import AdminApp
from gateway.config import LoadedConfig, listeners_of, parse_bind
from gateway.metrics import WorkerStats
from gateway.reload import Reloader
from gateway.runtime import Runtime
from gateway.server import AiohttpEngine
from gateway.tls import TLSError, TLSManager

log = logging.getLogger("gateway")


@dataclass
class RunOptions:
    config_path: str
    listen: str = "0.0.0.0:8080"
    admin_listen: str = "127.0.0.1:9180"
    engine: str = "aiohttp"
    drain_delay: float = 5.0
    drain_timeout: float = 20.0
    admin_tokens: str | None = None
    watch: bool = True
    access_log: str | None = None


class StartupError(Exception):
    """Raised for an unusable address or the like: ``gateway run`` exits 2."""


def local_stats(runtime: Runtime, engine: AiohttpEngine) -> WorkerStats:
    return WorkerStats(
        counters=dict(zip(runtime.counters.keys, runtime.counters.values, strict=False)),
        histograms={
            env: (list(h.counts), h.total) for env, h in engine.forwarder.stats.histograms.items()
        },
        connections_open=dict(runtime.connections_open),
        in_flight=dict(runtime.in_flight),
    )


async def serve(opts: RunOptions, loaded: LoadedConfig) -> int:
    runtime = Runtime(loaded, opts.listen)
    gc.freeze()  # the startup snapshot is long-lived: keep it out of GC scans (see reload)
    try:
        tls = TLSManager(loaded.config, opts.listen)
    except TLSError as exc:
        raise StartupError(str(exc)) from None
    runtime.on_swap(lambda snap: tls.reload(snap.config))
    access_log = AccessLog(opts.access_log) if opts.access_log else None
    engine = AiohttpEngine(runtime, access_log)
    binds = {lst.name: parse_bind(lst.bind) for lst in listeners_of(loaded.config, opts.listen)}
    try:
        admin_bind = parse_bind(opts.admin_listen)
    except ValueError as exc:
        raise StartupError(f"--admin-listen: {exc}") from None
    reloader = Reloader(runtime, opts.config_path)
    admin = AdminApp(
        runtime, reloader, engine.name, lambda: local_stats(runtime, engine), admin_bind.host
    )
    runner = web.AppRunner(admin.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await engine.start(binds, tls.contexts)
        site = web.TCPSite(runner, admin_bind.host, admin_bind.port, reuse_address=True)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await engine.shutdown(0)
        raise StartupError(f"cannot listen: {exc}") from None
    for name, (host, port) in engine.addresses.items():
        log.info("listening listener=%s address=%s:%d", name, host, port)
    admin_addr = runner.addresses[0]
    log.info("listening listener=admin address=%s:%d", admin_addr[0], admin_addr[1])
    log.info(
        "serving config sha256=%s environments=%d engine=%s",
        runtime.snapshot.short_sha,
        len(runtime.snapshot.envs),
        engine.name,
    )
    reloader.start(watch=opts.watch)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
    if access_log is not None:
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
    await stop.wait()

    log.info("draining: readiness failing, listeners close in %.1fs", opts.drain_delay)
    runtime.draining = True
    if opts.drain_delay > 0:
        await asyncio.sleep(opts.drain_delay)
    await engine.close_listeners()
    log.info("listeners closed; waiting up to %.1fs for in-flight requests", opts.drain_timeout)
    await engine.shutdown(opts.drain_timeout)
    await reloader.stop()
    await runner.cleanup()
    if access_log is not None:
        access_log.close()
    log.info("stopped")
    return 0
