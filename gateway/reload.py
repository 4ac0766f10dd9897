"""Hot reload: watch the config file, rebuild the snapshot off the hot path, swap it whole.

Every way a file gets replaced ends in the same place: an event (or the periodic hash
check, for file systems where inotify events never arrive, such as NFS) asks for a reload;
the file is read until two reads a moment apart agree (an editor that truncates and then
writes must not have its half-written file applied); the bytes are parsed, validated and
compiled on the loop in steps of a fraction of a millisecond (gateway/steps.py says why
not in a thread), so requests keep being served meanwhile; then one reference is rebound. Any
failure leaves the last good snapshot serving. Watching the directory rather than the
file follows renames over the file and Kubernetes' ConfigMap mounts, where
``FILE -> ..data/FILE`` and ``..data`` is a symlink swapped by rename.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import logging
import operator
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.config import MAX_CONFIG_BYTES, ConfigError, LoadedConfig, listeners_of, load_steps
from gateway.policy import Snapshot, compile_steps
from gateway.runtime import Runtime
from gateway.steps import Steps, drive

T = TypeVar("T")

log = logging.getLogger("gateway.reload")

SETTLE_S = 0.1  # two reads this far apart must agree before a file is trusted
SETTLE_MAX_S = 3.0
POLL_S = 2.0  # the safety-net content check
SLICE_S = 0.00025  # while a reload compiles, the loop serves requests at least this often


class ReloadError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    changed: bool
    sha256: str
    message: str
    seconds: float


@dataclass(slots=True)
class SliceStats:
    """How a reload shared the loop: for the log, and to find a step that grew too long."""

    yields: int = 0
    longest_step_s: float = 0.0
    longest_step_at: str = ""


def _where(steps: Steps[object]) -> str:
    # The innermost generator running: the function whose step took the time.
    g: object = steps
    at = ""
    while g is not None and getattr(g, "gi_frame", None) is not None:
        at = f"{g.gi_code.co_name}:{g.gi_frame.f_lineno}"  # type: ignore[attr-defined]
        g = getattr(g, "gi_yieldfrom", None)
    return at


async def drive_on_loop(
    steps: Steps[T], stats: SliceStats | None = None, slice_s: float = SLICE_S
) -> T:
    """Run ``steps`` on the running loop, giving it back whenever ``slice_s`` has passed:
    requests wait at most about one slice (plus the longest single step) for a reload."""
    clock = time.perf_counter
    stats = stats if stats is not None else SliceStats()
    deadline = clock() + slice_s
    while True:
        t0 = clock()
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result
        now = clock()
        if now - t0 > stats.longest_step_s:
            stats.longest_step_s = now - t0
            stats.longest_step_at = _where(steps)
        if now >= deadline:
            await asyncio.sleep(0)
            if now - t0 > slice_s:
                # After a long step, what became ready meanwhile (a timer's task, a
                # request's task) is queued behind this one, so one turn would run the
                # next step first and add the two. Waking a task from a timer takes a
                # turn more (timer, then task): uvloop runs it after the second turn,
                # asyncio after the third.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            stats.yields += 1
            deadline = clock() + slice_s


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_CONFIG_BYTES + 1)


def _read_hashed(path: str) -> tuple[bytes, str]:
    # Called in a thread: hashlib lets go of the GIL while it hashes megabytes.
    raw = _read(path)
    return raw, hashlib.sha256(raw).hexdigest()


def diff_snapshots(old: Snapshot, new: Snapshot) -> list[str]:
    """What changed, per environment, in words an operator reads in a log."""
    return drive(diff_steps(old, new))


def diff_steps(old: Snapshot, new: Snapshot) -> Steps[list[str]]:
    """``diff_snapshots`` one environment per step (whole lists may have changed)."""
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
        if ta is not tb:
            added, added_sample = yield from _missing(tb, ta)
            if added:
                lines.append(f"environment {name}: added {_short(added, added_sample)}")
            removed, removed_sample = yield from _missing(ta, tb)
            if removed:
                lines.append(f"environment {name}: removed {_short(removed, removed_sample)}")
        if a.enforcement != b.enforcement:
            lines.append(f"environment {name}: enforcement {a.enforcement} -> {b.enforcement}")
        ca, cb = old.loaded.candidates[name], new.loaded.candidates[name]
        if (ca is None) != (cb is None) or (
            ca is not None and cb is not None and set(ca.texts) != set(cb.texts)
        ):
            lines.append(f"environment {name}: candidate list changed")
    return lines


DIFF_CHUNK = 1000  # about 0.1 ms of set lookups per step
DIFF_AT_ONCE = 20_000
SAMPLE = 20


def _missing(a: frozenset[str], b: frozenset[str]) -> Steps[tuple[int, list[str]]]:
    """How many of ``a`` are not in ``b``, and up to SAMPLE of them: set lookups in C, a
    few thousand per step (a whole 100,000-entry difference is milliseconds in one go)."""
    if len(a) <= DIFF_AT_ONCE:
        # In C: cheaper in total than chunks (the lookups are memory-bound), ~1 ms.
        diff = a - b
        yield
        return len(diff), list(itertools.islice(diff, SAMPLE))
    count = 0
    sample: list[str] = []
    it = iter(a)
    while chunk := list(itertools.islice(it, DIFF_CHUNK)):
        absent = list(itertools.compress(chunk, map(operator.not_, map(b.__contains__, chunk))))
        count += len(absent)
        sample.extend(absent[: SAMPLE - len(sample)])
        yield
    return count, sample


def _short(count: int, sample: list[str]) -> str:
    # When a whole list changed, a sample (sorted) rather than a sort of 100,000 names.
    shown = ", ".join(sorted(sample))
    return shown if count <= len(sample) else f"{shown} and {count - len(sample)} more"


class LoopStallMonitor:
    """Measures the longest time the event loop could not run a timer during a reload:
    the cost a reload imposes on requests (its longest step, see SLICE_S)."""

    TICK_S = 0.002

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._since = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._since = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # perf_counter, not loop.time(): uvloop caches the loop's clock per iteration.
        while True:
            self._since = time.perf_counter()
            await asyncio.sleep(self.TICK_S)
            self.max_lag = max(self.max_lag, time.perf_counter() - self._since - self.TICK_S)

    async def stop(self) -> float:
        # The tick now overdue counts too: the end of a reload (the swap, freeing the old
        # snapshot) runs after the monitor's last wake-up.
        self.max_lag = max(self.max_lag, time.perf_counter() - self._since - self.TICK_S)
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
        self.last_slices = SliceStats()

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
                sl = self.last_slices
                log.info(
                    "reload took %.3fs; longest event-loop stall meanwhile %.1f ms; "
                    "the loop served requests %d times between steps, longest step "
                    "%.1f ms (%s)",
                    result.seconds,
                    stall * 1000,
                    sl.yields,
                    sl.longest_step_s * 1000,
                    sl.longest_step_at,
                )
            return result

    async def _reload(self, settle: bool, force: bool) -> ReloadResult:
        t0 = time.perf_counter()
        try:
            raw, sha = await asyncio.to_thread(_read_hashed, self.path)
            # Settle only bytes that would change something: an event for a file already
            # in force (our own write, a touch) must not hold the lock for the settle time.
            if settle and sha != self.runtime.snapshot.sha256:
                raw, sha = await asyncio.to_thread(self._read_settled, self.path)
        except OSError as exc:
            return self._fail(f"cannot read {self.path}: {exc.strerror or exc}", t0)
        if sha == self.runtime.snapshot.sha256 and not force:
            self._last_bytes_sha = sha
            if not self.runtime.last_reload_ok:
                # The file is back to the config in force: the failure is over.
                self.runtime.last_reload_ok = True
                self.runtime.last_reload_error = None
            return ReloadResult(True, False, sha, "unchanged", time.perf_counter() - t0)
        if sha == self._last_bytes_sha and not force and not self.runtime.last_reload_ok:
            # The reason is repeated: an operator calling reload after the watcher already
            # refused the file must not have to go to the log to learn what is wrong.
            why = self.runtime.last_reload_error or "see the log"
            return ReloadResult(False, False, sha, f"unchanged, still invalid: {why}", 0.0)
        self._last_bytes_sha = sha
        old = self.runtime.snapshot
        # A new snapshot is moved to the permanent generation once it serves (gc.freeze,
        # as Instagram does for its long-lived data), so that no later full collection
        # walks its 100,000-key maps (tens of ms with the GIL held); it is acyclic, so
        # refcounting still frees it when replaced. No collection runs first: a young
        # one walks every container the reload just built (15 ms at 100,000 entries, in
        # one piece), and the cyclic garbage it would find is what a few hundred requests
        # left since the last automatic collection.
        slices = SliceStats()
        try:
            snap, changes = await drive_on_loop(self._build(raw, sha, old), slices)
        except ConfigError as exc:
            return self._fail("; ".join(exc.errors), t0)
        except ReloadError as exc:
            return self._fail(str(exc), t0)
        self.runtime.swap(snap)
        # Freeing the old snapshot (about 7 ms at 100,000 entries: one str each) happens
        # here, once; in-flight requests hold their own reference until they finish.
        del old
        gc.freeze()
        dt = time.perf_counter() - t0
        log.info(
            "config reloaded sha256=%s in %.3fs: %s",
            snap.short_sha,
            dt,
            "; ".join(changes) if changes else "no allowlist change",
        )
        self.last_slices = slices
        result = ReloadResult(True, True, snap.sha256, "; ".join(changes), dt)
        for cb in self.on_result:
            cb(result)
        return result

    def _build(self, raw: bytes, sha: str, old: Snapshot) -> Steps[tuple[Snapshot, list[str]]]:
        loaded: LoadedConfig = yield from load_steps(raw, previous=old.loaded, sha256=sha)
        before = {lst.name: lst.bind for lst in listeners_of(old.config, self.runtime.listen)}
        after = {lst.name: lst.bind for lst in listeners_of(loaded.config, self.runtime.listen)}
        if before != after:
            raise ReloadError(
                "restart required: the set of listeners or their binds changed "
                f"({sorted(before.items())} -> {sorted(after.items())}); keeping the old config"
            )
        snap = yield from compile_steps(
            loaded, self.runtime.counters, self.runtime.listen, previous=old
        )
        return snap, (yield from diff_steps(old, snap))

    def _read_settled(self, path: str) -> tuple[bytes, str]:
        deadline = time.monotonic() + SETTLE_MAX_S
        raw = _read(path)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            again = _read(path)
            if again == raw:
                break
            raw = again
        return raw, hashlib.sha256(raw).hexdigest()

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
                _, sha = await asyncio.to_thread(_read_hashed, self.path)
            except OSError:
                continue
            if sha != self._last_bytes_sha:
                self.trigger()
