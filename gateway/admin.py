"""The admin listener (never the public one): metrics, health, and the admin API.

``/metrics``, ``/healthz`` and ``/readyz`` answer whatever the Host (the kubelet probes a
pod by its IP). The API answers only requests whose Host is localhost, a loopback
address, the bind address or a configured admin hostname: a browser tricked by DNS
rebinding into calling it sends the attacker's name as Host and is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import hosts
from gateway.metrics import ConfigState, GatewayCollector, WorkerStats
from gateway.reload import Reloader
from gateway.runtime import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def api_error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status=status)


class AdminApp:
    def __init__(
        self,
        runtime: Runtime,
        reloader: Reloader | None,
        engine_name: str,
        stats: Callable[[], WorkerStats],
        bind_host: str,
    ) -> None:
        self.runtime = runtime
        self.reloader = reloader
        self.engine_name = engine_name
        self.bind_host = bind_host
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(stats, self.config_state))
        self.app = web.Application(middlewares=[self._host_guard])
        r = self.app.router
        r.add_get("/metrics", self.metrics)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/api/v1/environments", self.environments)
        r.add_get("/api/v1/environments/{name}", self.environment)
        r.add_get("/api/v1/explain", self.explain)
        r.add_post("/api/v1/reload", self.reload)

    def config_state(self) -> ConfigState:
        snap = self.runtime.snapshot
        return ConfigState(
            sha256=snap.sha256,
            last_reload_ok=self.runtime.last_reload_ok,
            last_success_ts=self.runtime.last_reload_success_ts,
            allowlist_entries={name: env.entry_count for name, env in snap.envs.items()},
            engine=self.engine_name,
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

    async def metrics(self, request: web.Request) -> web.Response:
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

    def _env_view(self, name: str) -> dict[str, Any]:
        snap = self.runtime.snapshot
        env = snap.envs[name]
        cfg_env = next(e for e in snap.config.environments if e.name == name)
        counts: dict[str, int] = {}
        for family, labels, value in self.runtime.counters.items():
            if family.startswith("gateway_requests_") and labels[1] == name:
                key = ("allowed." if "allowed" in family else "blocked.") + labels[2]
                counts[key] = counts.get(key, 0) + value
        return {
            "name": name,
            "hostname": env.hostname.text,
            "secure_endpoints": [e.text for e in snap.loaded.entries[name]],
            "candidate_endpoints": [e.text for e in c]
            if (c := snap.loaded.candidates[name]) is not None
            else None,
            "enforcement": env.enforcement,
            "locked": env.locked,
            "upstreams": list(cfg_env.upstreams),
            "counters": counts,
        }

    def _etag(self) -> str:
        return f'"{self.runtime.snapshot.sha256}"'

    async def environments(self, request: web.Request) -> web.Response:
        snap = self.runtime.snapshot
        return json_response(
            {
                "config_sha256": snap.sha256,
                "management": snap.config.management,
                "environments": [self._env_view(n) for n in snap.envs],
            },
            headers={"ETag": self._etag()},
        )

    async def environment(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.runtime.snapshot.envs:
            return api_error(404, f"unknown environment {name!r}")
        view = self._env_view(name)
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
            return api_error(404, f"unknown listener {listener!r}")
        result = lp.explain(host).as_dict()
        result["config_sha256"] = snap.sha256
        return json_response(result)

    async def reload(self, request: web.Request) -> web.Response:
        if self.reloader is None:
            return api_error(503, "reload is not available")
        peer = request.remote or ""
        try:
            loopback = ipaddress.ip_address(peer).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return api_error(403, "reload is allowed from loopback callers only")
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
