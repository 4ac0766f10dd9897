"""Hot reload: watch the config file, rebuild the snapshot off the hot path, swap it whole.

Every way a file gets replaced ends in the same place: an event (or the periodic hash
check, for file systems where inotify events never arrive, such as NFS) asks for a reload;
the file is read until two reads a moment apart agree (an editor that truncates and then
writes must not have its half-written file applied); the bytes are parsed, validated and
compiled in a thread; the loop then rebinds one reference. Any failure leaves the last
good snapshot serving. Watching the directory rather than the file follows renames over
the file and Kubernetes' ConfigMap mounts, where ``FILE -> ..data/FILE`` and ``..data`` is
a symlink swapped by rename.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import MAX_CONFIG_BYTES, ConfigError, LoadedConfig, listeners_of, load_bytes
from gateway.policy import Snapshot, compile_config
from gateway.runtime import Runtime

log = logging.getLogger("gateway.reload")

SETTLE_S = 0.1  # two reads this far apart must agree before a file is trusted
SETTLE_MAX_S = 3.0
POLL_S = 2.0  # the safety-net content check
RELOAD_SWITCH_INTERVAL_S = 0.0005


class ReloadError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    changed: bool
    sha256: str
    message: str
    seconds: float


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_CONFIG_BYTES + 1)


def diff_snapshots(old: Snapshot, new: Snapshot) -> list[str]:
    """What changed, per environment, in words an operator reads in a log."""
    lines = []
    for name in sorted(set(old.envs) | set(new.envs)):
        a, b = old.envs.get(name), new.envs.get(name)
        if a is None:
            lines.append(f"environment {name}: added")
            continue
        if b is None:
            lines.append(f"environment {name}: removed")
            continue
        ta, tb = old.loaded.entry_texts[name], new.loaded.entry_texts[name]
        added, removed = (sorted(tb - ta), sorted(ta - tb)) if ta is not tb else ([], [])
        if added:
            lines.append(f"environment {name}: added {_short(added)}")
        if removed:
            lines.append(f"environment {name}: removed {_short(removed)}")
        if a.enforcement != b.enforcement:
            lines.append(f"environment {name}: enforcement {a.enforcement} -> {b.enforcement}")
        ca, cb = old.loaded.candidates[name], new.loaded.candidates[name]
        if (ca is None) != (cb is None) or (
            ca is not None and cb is not None and {e.text for e in ca} != {e.text for e in cb}
        ):
            lines.append(f"environment {name}: candidate list changed")
    return lines


def _short(items: list[str], limit: int = 20) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


class LoopStallMonitor:
    """Measures the longest time the event loop could not run a timer during a reload:
    the cost a reload imposes on requests (the GIL is shared with the compile thread)."""

    TICK_S = 0.002

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.TICK_S)
            self.max_lag = max(self.max_lag, loop.time() - t0 - self.TICK_S)

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.max_lag


class Reloader:
    def __init__(self, runtime: Runtime, path: str) -> None:
        self.runtime = runtime
        self.path = os.path.abspath(path)
        self._lock = asyncio.Lock()
        self._last_bytes_sha = runtime.snapshot.sha256
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_result: list[Callable[[ReloadResult], None]] = []

    def start(self, watch: bool = True) -> None:
        """Start reloading on trigger(); with ``watch`` also on file changes."""
        coros = [self._watch(), self._poll(), self._worker()] if watch else [self._worker()]
        for coro in coros:
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def trigger(self) -> None:
        """Ask for a reload soon (signal handlers and watchers call this)."""
        self._wake.set()

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.reload(settle=True)
            except Exception:  # never let the reload loop die
                log.exception("reload crashed")

    async def reload(self, settle: bool = False, force: bool = False) -> ReloadResult:
        async with self._lock:
            monitor = LoopStallMonitor()
            monitor.start()
            try:
                result = await self._reload(settle, force)
            finally:
                stall = await monitor.stop()
            if result.changed:
                self.runtime.last_reload_stall_s = stall
                self.runtime.last_reload_duration_s = result.seconds
                log.info(
                    "reload took %.3fs; longest event-loop stall meanwhile %.1f ms",
                    result.seconds,
                    stall * 1000,
                )
            return result

    async def _reload(self, settle: bool, force: bool) -> ReloadResult:
        t0 = time.perf_counter()
        try:
            raw = await asyncio.to_thread(_read, self.path)
            # Settle only bytes that would change something: an event for a file already
            # in force (our own write, a touch) must not hold the lock for the settle time.
            if settle and hashlib.sha256(raw).hexdigest() != self.runtime.snapshot.sha256:
                raw = await asyncio.to_thread(self._read_settled, self.path)
        except OSError as exc:
            return self._fail(f"cannot read {self.path}: {exc.strerror or exc}", t0)
        sha = hashlib.sha256(raw).hexdigest()
        if sha == self.runtime.snapshot.sha256 and not force:
            self._last_bytes_sha = sha
            if not self.runtime.last_reload_ok:
                # The file is back to the config in force: the failure is over.
                self.runtime.last_reload_ok = True
                self.runtime.last_reload_error = None
            return ReloadResult(True, False, sha, "unchanged", time.perf_counter() - t0)
        if sha == self._last_bytes_sha and not force and not self.runtime.last_reload_ok:
            return ReloadResult(False, False, sha, "unchanged (still invalid)", 0.0)
        self._last_bytes_sha = sha
        old = self.runtime.snapshot
        # Compiling a large list allocates hundreds of thousands of objects; the cyclic GC
        # would then run full collections over all of them while holding the GIL, which
        # stalled the event loop for 60-90 ms at 100,000 entries (12 ms without). So the
        # collector is paused while the snapshot is built, and afterwards the snapshot is
        # moved to the permanent generation (gc.freeze, as Instagram does for its
        # long-lived data): it is acyclic, so refcounting still frees it when replaced.
        gc.disable()
        # The event loop releases the GIL at every syscall and must then wait up to the
        # switch interval (5 ms) for the compile thread to give it back: the "convoy
        # effect", which made requests queue during a 1 s compile. A short interval while
        # compiling bounds that wait.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(RELOAD_SWITCH_INTERVAL_S)
        try:
            snap, changes = await asyncio.to_thread(self._build, raw, old)
        except ConfigError as exc:
            return self._fail("; ".join(exc.errors), t0)
        except ReloadError as exc:
            return self._fail(str(exc), t0)
        finally:
            sys.setswitchinterval(switch)
            gc.enable()
        self.runtime.swap(snap)
        del old
        gc.collect(1)  # young generations only: cheap, and keeps garbage out of the freeze
        gc.freeze()
        dt = time.perf_counter() - t0
        log.info(
            "config reloaded sha256=%s in %.3fs: %s",
            snap.short_sha,
            dt,
            "; ".join(changes) if changes else "no allowlist change",
        )
        result = ReloadResult(True, True, snap.sha256, "; ".join(changes), dt)
        for cb in self.on_result:
            cb(result)
        return result

    def _build(self, raw: bytes, old: Snapshot) -> tuple[Snapshot, list[str]]:
        loaded: LoadedConfig = load_bytes(raw, previous=old.loaded)
        before = {lst.name: lst.bind for lst in listeners_of(old.config, self.runtime.listen)}
        after = {lst.name: lst.bind for lst in listeners_of(loaded.config, self.runtime.listen)}
        if before != after:
            raise ReloadError(
                "restart required: the set of listeners or their binds changed "
                f"({sorted(before.items())} -> {sorted(after.items())}); keeping the old config"
            )
        # Counter slots are allocated from the live Counters: compile only appends slots,
        # and appends from this thread never move the slots the loop is incrementing.
        snap = compile_config(loaded, self.runtime.counters, self.runtime.listen, previous=old)
        return snap, diff_snapshots(old, snap)

    def _read_settled(self, path: str) -> bytes:
        deadline = time.monotonic() + SETTLE_MAX_S
        raw = _read(path)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            again = _read(path)
            if again == raw:
                return raw
            raw = again
        return raw

    def _fail(self, message: str, t0: float) -> ReloadResult:
        self.runtime.reload_failed(message)
        log.error(
            "config reload failed, keeping sha256=%s: %s", self.runtime.snapshot.short_sha, message
        )
        result = ReloadResult(False, False, "", message, time.perf_counter() - t0)
        for cb in self.on_result:
            cb(result)
        return result

    async def _watch(self) -> None:
        import watchfiles

        directory = os.path.dirname(self.path)
        name = os.path.basename(self.path)

        def relevant(_change: watchfiles.Change, changed: str) -> bool:
            base = os.path.basename(changed)
            # "..data" is the ConfigMap symlink; "..2024_..." its target directories.
            return base == name or base.startswith("..")

        while True:
            try:
                async for _ in watchfiles.awatch(
                    directory,
                    watch_filter=relevant,
                    debounce=50,
                    step=20,
                    recursive=False,
                    force_polling=False,
                ):
                    self.trigger()
            except Exception:  # the directory vanished, inotify overflowed...
                log.exception("config watcher stopped; restarting in 1 s")
            await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                raw = await asyncio.to_thread(_read, self.path)
            except OSError:
                continue
            if hashlib.sha256(raw).hexdigest() != self._last_bytes_sha:
                self.trigger()
