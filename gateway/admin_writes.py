"""The admin API's changes (contract §4): add, remove, replace, enforcement, promote.

Each one goes through ``store.ConfigStore.edit`` (the CLI's code path: lock, validation,
atomic write, audit) in a thread, then through the normal reload path, and is answered
only when the config it wrote is the one serving requests: a client that gets a 200 for
an added host can use that host at once. When that does not happen within the timeout
the answer is 504, saying that the file was written but is not live yet.

Writes in this process also queue on an ``asyncio.Lock``: the flock already serialises
them, but waiting for it would hold a worker thread each, and queueing here keeps each
write's reload next to it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gateway import edits, jsondoc
from gateway.admin import IDENTITY, AdminApp, api_error, json_response
from gateway.store import Actor, EditResult, Mutation, StoreError

log = logging.getLogger("gateway.admin")


class _BadRequest(Exception):
    pass


async def _body(request: web.Request, keys: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object, holding no key but ``keys`` (a misspelt key is an error,
    as in the config, not a field silently ignored)."""
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:
        # A Content-Encoding the body does not follow (aiohttp decodes gzip, deflate, br).
        raise _BadRequest(f"the body cannot be read: {exc}") from None
    try:
        doc = jsondoc.loads(raw)
    except jsondoc.JSONDocError as exc:
        raise _BadRequest(f"the body: {exc}") from None
    if not isinstance(doc, dict):
        raise _BadRequest("the body must be a JSON object")
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise _BadRequest(
            f"unknown key {unknown[0]!r} in the body; it takes {', '.join(sorted(keys))}"
        )
    return doc


class WriteRoutes:
    def __init__(self, admin: AdminApp, timeout_s: float) -> None:
        self.admin = admin
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- handlers -----------------------------------------------------------------------

    async def add(self, request: web.Request) -> web.Response:
        try:
            doc = await _body(request, frozenset({"host", "hosts"}))
        except _BadRequest as exc:
            return self._bad(str(exc))
        host = doc.get("host")
        many = doc.get("hosts")
        if isinstance(host, str) and many is None:
            values = [host]
        elif host is None and isinstance(many, list) and many:
            values = many
        else:
            return self._bad('send {"host": "www.example.com"}')
        return await self._apply(request, "add", edits.add(values))

    async def remove(self, request: web.Request) -> web.Response:
        # The path segment arrives percent-decoded: "%5B2001%3Adb8%3A%3A1%5D" is an IPv6.
        return await self._apply(request, "remove", edits.remove([request.match_info["host"]]))

    async def replace(self, request: web.Request) -> web.Response:
        if request.headers.get("If-Match") is None:
            # A whole-list replace from a stale read would silently undo others' changes.
            return api_error(
                428,
                "If-Match is required to replace the whole list: GET the environment and "
                "send its ETag",
                reason="precondition_required",
            )
        try:
            doc = await _body(request, frozenset({"secure_endpoints"}))
        except _BadRequest as exc:
            return self._bad(str(exc))
        values = doc.get("secure_endpoints")
        if not isinstance(values, list):
            return self._bad('send {"secure_endpoints": ["www.example.com", ...]}')
        return await self._apply(request, "replace", edits.replace(values))

    async def enforcement(self, request: web.Request) -> web.Response:
        try:
            doc = await _body(request, frozenset({"enforcement"}))
        except _BadRequest as exc:
            return self._bad(str(exc))
        mode = doc.get("enforcement")
        if not isinstance(mode, str):
            return self._bad('send {"enforcement": "enforce" | "report" | "off"}')
        return await self._apply(request, "enforcement", edits.set_enforcement(mode))

    async def promote(self, request: web.Request) -> web.Response:
        return await self._apply(request, "promote", edits.promote())

    # -- the common path ----------------------------------------------------------------

    @staticmethod
    def _bad(message: str) -> web.Response:
        return api_error(400, message, reason="bad_request")

    async def _apply(self, request: web.Request, action: str, mutation: Mutation) -> web.Response:
        store = self.admin.store
        if store is None:
            return api_error(503, "no config file to change", reason="no_config")
        who = request[IDENTITY]
        name = request.match_info["name"]
        if_match = request.headers.get("If-Match")
        async with self._lock:
            try:
                result = await asyncio.to_thread(
                    store.edit, name, action, mutation, Actor(who.name, who.role), if_match
                )
            except StoreError as exc:
                extra: dict[str, Any] = {"reason": exc.reason}
                if exc.errors:
                    extra["errors"] = exc.errors
                return api_error(exc.status, exc.message, **extra)
            if result.changed:
                log.info(
                    "config changed by %s (%s): %s %s %s, sha256 %s -> %s",
                    who.name,
                    who.role,
                    name,
                    action,
                    ", ".join(result.values),
                    result.sha256_before[:12],
                    result.sha256_after[:12],
                )
            live, why = await self._wait_live(result.sha256_after, result.changed)
        return self._answer(result, live, why)

    def _answer(self, result: EditResult, live: bool, why: str) -> web.Response:
        snap = self.admin.runtime.snapshot
        if not live:
            path = self.admin.store.path if self.admin.store else "the config file"
            return api_error(
                504,
                f"the change was written to {path} but the gateway is not serving it yet: {why}",
                reason="not_live",
                changed=result.changed,
                config_sha256_written=result.sha256_after,
                config_sha256_live=snap.sha256,
            )
        body: dict[str, Any] = {
            "changed": result.changed,
            "action": result.action,
            "values": result.values,
            **result.detail,
            "config_sha256": snap.sha256,
            "sha256_before": result.sha256_before,
        }
        if result.environment in snap.envs:
            body["environment"] = self.admin.env_view(result.environment)
        if result.audit_error:
            log.error("%s", result.audit_error)
            body["audit_error"] = result.audit_error
        return json_response(body, headers={"ETag": f'"{snap.sha256}"'})

    async def _wait_live(self, sha: str, changed: bool) -> tuple[bool, str]:
        runtime = self.admin.runtime
        if not changed and runtime.snapshot.sha256 == sha:
            return True, ""
        reloader = self.admin.reloader
        if reloader is None:
            # Someone else reloads (a test harness, another worker's watcher): watch.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            while loop.time() < deadline:
                if runtime.snapshot.sha256 == sha:
                    return True, ""
                await asyncio.sleep(0.05)
            return False, f"not reloaded within {self.timeout_s:g} s"
        # Even when the file watcher got there first, reload through the reloader: its
        # answer is the one that knows whether every part of the gateway serves the file.
        task = asyncio.get_running_loop().create_task(reloader.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            # shield: a slow reload is left to finish (and swap) after we stop waiting.
            result = await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
        except TimeoutError:
            return False, f"the reload did not finish within {self.timeout_s:g} s"
        if result.ok:
            # This reload read the file after the write, so what serves now is this
            # version or a later one written on top of it (writers edit the latest file
            # under the lock).
            return True, ""
        return False, f"reload failed: {result.message}"
