"""The admin listener (never the public one): metrics, health, and the admin API.

``/metrics``, ``/healthz`` and ``/readyz`` answer whatever the Host (the kubelet probes a
pod by its IP). The API answers only requests whose Host is localhost, a loopback
address, the bind address or a configured admin hostname: a browser tricked by DNS
rebinding into calling it sends the attacker's name as Host and is refused.

Then bearer tokens (``tokens.py``): ``viewer`` reads, ``admin`` also changes. Without a
tokens file, reads are open only on a loopback listener (only this machine reaches it),
changes are refused, and reload is allowed to loopback callers. Changes are in
``admin_writes.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import hosts
from gateway.audit import MAX_TAIL, AuditError, AuditLog, now_rfc3339
from gateway.config import MAX_CONFIG_BYTES
from gateway.jsondoc import dumps_pretty
from gateway.metrics import ConfigState, GatewayCollector, WorkerStats
from gateway.policy import DISAGREE
from gateway.reload import Reloader
from gateway.runtime import Runtime
from gateway.store import ConfigStore, external_message
from gateway.tokens import Identity, Role, TokenStore

log = logging.getLogger("gateway.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (environment to clear or None for all, clear?) -> {environment: rows}
BlockedSource = Callable[[str | None, bool], Awaitable[dict[str, list[dict[str, object]]]]]
OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
IDENTITY = web.RequestKey("identity", Identity)  # who made the request, set by _need
# How long a write waits for its config to be the one serving before saying so (504).
WRITE_LIVE_TIMEOUT_S = 10.0
# The console (gateway/ui): static files only, every datum comes from the API with a token.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# The reason an error carries when its caller names none (aiohttp's own refusals included).
DEFAULT_REASONS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    421: "misdirected",
    428: "precondition_required",
}
MAX_BLOCKED_LIMIT = 10_000


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps_pretty(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def api_error(status: int, message: str, **extra: Any) -> web.Response:
    headers = None
    if status == 401:
        # RFC 9110 §11.6.1: a 401 names the scheme to use.
        headers = {"WWW-Authenticate": 'Bearer realm="gateway-admin"'}
    extra.setdefault("reason", DEFAULT_REASONS.get(status, "error"))
    return json_response({"error": message, **extra}, status=status, headers=headers)


def query_limit(request: web.Request, default: int, maximum: int) -> int | web.Response:
    """``?limit=N``: ASCII digits only (``int`` would take "５" or " 5"), 1..maximum."""
    raw = request.query.get("limit", str(default))
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= maximum:
        return int(raw)
    return api_error(400, f"limit must be an integer 1..{maximum}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminApp:
    def __init__(
        self,
        runtime: Runtime,
        reloader: Reloader | None,
        engine_name: str,
        stats: Callable[[], WorkerStats],
        bind_host: str,
        *,
        admin_tokens: str | None = None,
        config_path: str | None = None,
        audit_log: str | None = None,
        metrics_need_token: bool = False,
        write_timeout_s: float = WRITE_LIVE_TIMEOUT_S,
        blocked_source: BlockedSource | None = None,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``admin_tokens``: the tokens file (``gateway run --admin-tokens``); raises
        ``tokens.TokensError`` when it cannot be used. ``config_path`` defaults to the
        reloader's; ``audit_log`` to ``<config>.audit.jsonl`` beside it."""
        # admin_writes builds on this module's helpers, so it is imported here, not above.
        from gateway.admin_writes import WriteRoutes

        self.runtime = runtime
        self.reloader = reloader
        self.engine_name = engine_name
        self.bind_host = bind_host
        self.loopback_bind = _is_loopback(bind_host)
        self.tokens = TokenStore(admin_tokens) if admin_tokens else None
        self.metrics_need_token = metrics_need_token
        path = config_path or (reloader.path if reloader is not None else None)
        self.store = ConfigStore(path, audit_log) if path else None
        self.audit = self.store.audit if self.store else AuditLog(audit_log) if audit_log else None
        self.stats = stats
        self.blocked_source = blocked_source or self._local_blocked
        self.before_scrape = before_scrape
        self._ui_cache: dict[str, bytes] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(stats, self.config_state))
        # A whole-list PUT may be as large as the config file itself.
        self.app = web.Application(
            middlewares=[self._host_guard, self._json_errors], client_max_size=MAX_CONFIG_BYTES
        )
        writes = WriteRoutes(self, write_timeout_s)
        r = self.app.router
        r.add_get("/metrics", self.metrics)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        need = self._need
        # The console: behind the Host guard like the API, but no token (the page holds
        # no data; it calls the API with the token the user signs in with).
        r.add_get("/ui", self.ui_redirect)
        r.add_get("/ui/", self.ui_file)
        r.add_get("/ui/{file}", self.ui_file)
        r.add_get("/api/v1/whoami", need("viewer", self.whoami))
        r.add_get("/api/v1/environments", need("viewer", self.environments))
        r.add_get("/api/v1/environments/{name}", need("viewer", self.environment))
        env = "/api/v1/environments/{name}"
        r.add_post(env + "/endpoints", need("admin", writes.add))
        r.add_put(env + "/endpoints", need("admin", writes.replace))
        r.add_delete(env + "/endpoints/{host}", need("admin", writes.remove))
        r.add_put(env + "/enforcement", need("admin", writes.enforcement))
        r.add_post(env + "/candidate/promote", need("admin", writes.promote))
        r.add_get("/api/v1/explain", need("viewer", self.explain))
        r.add_get("/api/v1/audit", need("viewer", self.audit_log))
        r.add_post("/api/v1/reload", need("admin", self.reload, loopback_without_tokens=True))
        r.add_get("/api/v1/blocked-hosts", need("viewer", self.blocked_hosts))
        r.add_delete("/api/v1/blocked-hosts", need("admin", self.reset_blocked_hosts))

    # -- authentication -----------------------------------------------------------------

    def _need(self, role: Role, handler: Handler, loopback_without_tokens: bool = False) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = self._identify(request, role, loopback_without_tokens)
            if isinstance(who, web.Response):
                return who
            request[IDENTITY] = who
            return await handler(request)

        return guarded

    def _identify(
        self, request: web.Request, role: Role, loopback_without_tokens: bool
    ) -> Identity | web.Response:
        if self.tokens is None:
            if loopback_without_tokens and _is_loopback(request.remote or ""):
                return Identity("loopback", "admin")
            if role == "viewer" and self.loopback_bind:
                # Only processes on this machine can reach a loopback listener.
                return Identity("anonymous", "viewer")
            if role == "viewer":
                return api_error(
                    401,
                    "the admin listener is not on loopback: the API needs a tokens file "
                    "(gateway run --admin-tokens FILE) and a bearer token",
                    reason="no_tokens",
                )
            return api_error(
                403,
                "changes through the admin API need a tokens file: start the gateway with "
                "--admin-tokens FILE (make tokens with `gateway token`); none is configured",
                reason="no_tokens",
            )
        who = self.tokens.authenticate(request.headers.get("Authorization"))
        if who is None:
            return api_error(401, "a valid bearer token is required", reason="unauthenticated")
        if not who.may(role):
            return api_error(
                403,
                f"token {who.name!r} has the role {who.role}; this needs {role}",
                reason="forbidden",
            )
        return who

    def config_state(self) -> ConfigState:
        snap = self.runtime.snapshot
        return ConfigState(
            sha256=snap.sha256,
            last_reload_ok=self.runtime.last_reload_ok,
            last_success_ts=self.runtime.last_reload_success_ts,
            allowlist_entries={name: env.entry_count for name, env in snap.envs.items()},
            engine=self.engine_name,
            last_reload_duration_s=self.runtime.last_reload_duration_s,
            last_reload_stall_s=self.runtime.last_reload_stall_s,
        )

    def _host_allowed(self, request: web.Request) -> bool:
        values = request.headers.getall("Host", [])
        if len(values) != 1:
            return False
        try:
            auth = hosts.parse_host(values[0])
        except hosts.HostError:
            return False
        name = auth.host.strip("[]")
        if name == "localhost" or name == self.bind_host:
            return True
        if name in self.runtime.snapshot.config.admin_hostnames:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    @web.middleware
    async def _host_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not self._host_allowed(request):
            return api_error(
                421, "the admin API answers only to localhost, loopback or admin_hostnames"
            )
        return await handler(request)

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp's own refusals (404, 405, 413) as JSON, like every other API answer."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or request.path in OPEN_PATHS:
                raise
            return api_error(exc.status, exc.reason)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if self.metrics_need_token:
            who = self._identify(request, "viewer", False)
            if isinstance(who, web.Response):
                return who
        if self.before_scrape is not None:
            await self.before_scrape()
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.runtime.ready:
            return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
        reason = "draining" if self.runtime.draining else "starting"
        return web.Response(status=503, text=f"{reason}\n", headers={"Cache-Control": "no-store"})

    # -- the console ----------------------------------------------------------------------

    async def ui_redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": "/ui/", **UI_HEADERS})

    async def ui_file(self, request: web.Request) -> web.Response:
        name = request.match_info.get("file") or "index.html"
        ctype = UI_FILES.get(name)
        if ctype is None:
            return api_error(404, f"no console file {name!r}", reason="not_found")
        body = self._ui_cache.get(name)
        if body is None:
            try:
                body = (resources.files("gateway") / "ui" / name).read_bytes()
            except OSError as exc:
                log.error("console file %s cannot be read: %s", name, exc)
                return api_error(404, f"console file {name!r} is not installed", reason="not_found")
            self._ui_cache[name] = body
        return web.Response(body=body, headers={"Content-Type": ctype, **UI_HEADERS})

    async def whoami(self, request: web.Request) -> web.Response:
        who = request[IDENTITY]
        return json_response({"name": who.name, "role": who.role})

    def env_view(self, name: str) -> dict[str, Any]:
        snap = self.runtime.snapshot
        env = snap.envs[name]
        cfg_env = next(e for e in snap.config.environments if e.name == name)
        counts: dict[str, int] = {}
        disagreements = {"newly_blocked": 0, "newly_allowed": 0}
        for (family, labels), value in self.stats().counters.items():
            if family.startswith("gateway_requests_") and labels[1] == name:
                key = ("allowed." if "allowed" in family else "blocked.") + labels[2]
                counts[key] = counts.get(key, 0) + value
            elif family == DISAGREE and labels[0] == name and labels[1] in disagreements:
                disagreements[labels[1]] += value
        return {
            "name": name,
            "hostname": env.hostname.text,
            "secure_endpoints": list(snap.loaded.entries[name].texts),
            "candidate_endpoints": list(c.texts)
            if (c := snap.loaded.candidates[name]) is not None
            else None,
            "enforcement": env.enforcement,
            "locked": env.locked,
            "upstreams": list(cfg_env.upstreams),
            "counters": counts,
            "candidate_disagreements": disagreements,
        }

    def _etag(self) -> str:
        return f'"{self.runtime.snapshot.sha256}"'

    async def environments(self, request: web.Request) -> web.Response:
        snap = self.runtime.snapshot
        body: dict[str, Any] = {
            "config_sha256": snap.sha256,
            "management": snap.config.management,
            "environments": [self.env_view(n) for n in snap.envs],
        }
        if snap.config.management == "external":
            # Where to make changes instead: the same words as the writes' 409.
            body["management_message"] = external_message(
                self.store.path if self.store else "the config file"
            )
        return json_response(body, headers={"ETag": self._etag()})

    async def environment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.runtime.snapshot.envs:
            return api_error(404, f"unknown environment {name!r}", reason="unknown_environment")
        view = self.env_view(name)
        view["config_sha256"] = self.runtime.snapshot.sha256
        return json_response(view, headers={"ETag": self._etag()})

    async def explain(self, request: web.Request) -> web.Response:
        host = request.query.get("host")
        if host is None:
            return api_error(400, "host query parameter is required")
        snap = self.runtime.snapshot
        listener = request.query.get("listener") or next(iter(snap.listeners))
        lp = snap.listeners.get(listener)
        if lp is None:
            return api_error(404, f"unknown listener {listener!r}", reason="unknown_listener")
        result = lp.explain(host).as_dict()
        result["config_sha256"] = snap.sha256
        return json_response(result)

    async def audit_log(self, request: web.Request) -> web.Response:
        limit = query_limit(request, 100, MAX_TAIL)
        if isinstance(limit, web.Response):
            return limit
        if self.audit is None:
            return json_response({"path": None, "records": []})
        env = request.query.get("environment")
        # With a filter, look further back so that `limit` matching lines can be found.
        records = await asyncio.to_thread(self.audit.tail, MAX_TAIL if env else limit)
        if env:
            records = [r for r in records if r.get("environment") == env][-limit:]
        return json_response({"path": self.audit.path, "records": records})

    async def reload(self, request: web.Request) -> web.Response:
        if self.reloader is None:
            return api_error(503, "reload is not available")
        result = await self.reloader.reload(force=False)
        status = 200 if result.ok else 422
        return json_response(
            {
                "ok": result.ok,
                "changed": result.changed,
                "config_sha256": self.runtime.snapshot.sha256,
                "message": result.message,
            },
            status=status,
        )

    # -- top blocked hosts (report-only and refused) --------------------------------------

    async def _local_blocked(
        self, environment: str | None, clear: bool
    ) -> dict[str, list[dict[str, object]]]:
        if clear:
            self.runtime.clear_blocked(environment)
        return self.runtime.blocked_snapshot()

    async def blocked_hosts(self, request: web.Request) -> web.Response:
        env = request.query.get("environment")
        limit = query_limit(request, 100, MAX_BLOCKED_LIMIT)
        if isinstance(limit, web.Response):
            return limit
        if env is not None and env not in self.runtime.snapshot.envs and env != "":
            return api_error(404, f"unknown environment {env!r}", reason="unknown_environment")
        tables = await self.blocked_source(None, False)
        if env is not None:
            tables = {env: tables.get(env, [])}
        return json_response(
            {
                "environments": {name: rows[:limit] for name, rows in tables.items()},
                "note": "counts are upper bounds (Space-Saving); 'error' is the possible "
                "overestimate; 'truncated' values were longer than 256 characters",
            }
        )

    async def reset_blocked_hosts(self, request: web.Request) -> web.Response:
        env = request.query.get("environment")
        if env is not None and env not in self.runtime.snapshot.envs and env != "":
            return api_error(404, f"unknown environment {env!r}", reason="unknown_environment")
        who = request.get(IDENTITY)
        if self.audit is not None:
            # Audited first, like every allowlist change: an unwritable log refuses the
            # reset (507) rather than letting it pass unrecorded. Written off the loop
            # (the record is fsynced).
            record: dict[str, Any] = {
                "time": now_rfc3339(),
                "token": getattr(who, "name", None),
                "role": getattr(who, "role", None),
                "environment": env,
                "action": "reset_blocked_hosts",
                "values": [],
                "sha256_before": self.runtime.snapshot.sha256,
                "sha256_after": self.runtime.snapshot.sha256,
            }
            try:
                await asyncio.to_thread(self.audit.append, record)
            except (AuditError, OSError) as exc:
                return api_error(
                    507,
                    f"{exc}; the blocked-host counts were not reset (every change is audited)",
                    reason="audit_unwritable",
                )
        await self.blocked_source(env, True)
        return json_response({"reset": env if env is not None else "all"})
