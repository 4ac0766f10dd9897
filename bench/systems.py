"""The systems under test, the fast upstream, and how each is configured and started.

Each system gets the same job on loopback: refuse `Host: unknown.example` with 503 "Host
header does not match" and forward `Host: allowed.example` to the fast upstream.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import LOOPBACK, ManagedProcess, Pinning, StartError, free_port
from gateway.fast import engine_class

NGINX = "/usr/sbin/nginx"
ENV_HOSTNAME = "bench.example"
ALLOWED_HOST = "allowed.example"
REFUSED_HOST = "unknown.example"
UPSTREAM_BODY = "ok\n"


@dataclass(frozen=True)
class Scenario:
    name: str
    host: str
    expect_status: int
    needs_upstream: bool


SCENARIOS: dict[str, Scenario] = {
    "refused": Scenario("refused", REFUSED_HOST, 503, needs_upstream=False),
    "proxied": Scenario("proxied", ALLOWED_HOST, 200, needs_upstream=True),
}


@dataclass
class Context:
    run_dir: Path
    pinning: Pinning
    upstream_port: int | None = None
    python: str = sys.executable


@dataclass(frozen=True)
class SystemSpec:
    name: str
    description: str
    scenarios: tuple[str, ...]
    # Given the context and the port to listen on, write any config and return argv.
    command: Callable[[Context, int], list[str]]
    startup_timeout: float = 10.0
    needs_nginx: bool = False
    # Part of a plain `make bench` run; the others only when asked for (--systems).
    default: bool = True


@dataclass
class SystemState:
    """What the results record about one system, whether or not it ran."""

    name: str
    description: str
    status: str = "not_started"  # ok | failed | unavailable | not_started
    error: str | None = None
    command: list[str] = field(default_factory=list)
    port: int | None = None
    pid: int | None = None
    # scenario -> reason it was not measured (probe failed, no upstream, ...)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "description": self.description,
            "status": self.status,
            "error": self.error,
            "command": self.command,
            "port": self.port,
            "pid": self.pid,
            "skipped": self.skipped,
        }


# nginx


def _nginx_prefix(ctx: Context, name: str) -> Path:
    prefix = ctx.run_dir / name
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    # nginx run as root drops its worker to `nobody`; the worker must be able to enter
    # the prefix for its temp paths.
    for path in (ctx.run_dir, prefix, prefix / "logs"):
        os.chmod(path, 0o755)
    return prefix


def _nginx_argv(prefix: Path, conf: str) -> list[str]:
    (prefix / "nginx.conf").write_text(conf)
    # -e: the compiled-in error log (/var/log/nginx) is opened before the config is read.
    return [
        NGINX,
        "-p",
        f"{prefix}/",
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "logs" / "error.log"),
    ]


def _nginx_main(prefix: Path, http_body: str) -> str:
    # keepalive_requests raised from nginx's default 1000: otherwise nginx closes every
    # keep-alive connection after 1000 requests and the run measures reconnects, which
    # the Python systems never do.
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    default_type text/plain;
{http_body}
}}
"""


def nginx_sut_command(ctx: Context, port: int) -> list[str]:
    prefix = _nginx_prefix(ctx, "nginx")
    if ctx.upstream_port is None:
        allowed = "        location / { return 502; }"
        upstream = ""
    else:
        upstream = f"""
    upstream backend {{
        server {LOOPBACK}:{ctx.upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
        allowed = """        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
    body = f"""{upstream}
    server {{
        listen {LOOPBACK}:{port} default_server;
        add_header Cache-Control no-store always;
        return 503 "Host header does not match\\n";
    }}
    server {{
        listen {LOOPBACK}:{port};
        server_name {ALLOWED_HOST} {ENV_HOSTNAME};
{allowed}
    }}"""
    return _nginx_argv(prefix, _nginx_main(prefix, body))


def nginx_upstream_command(ctx: Context, port: int) -> list[str]:
    prefix = _nginx_prefix(ctx, "upstream")
    body = f"""
    server {{
        listen {LOOPBACK}:{port} default_server;
        return 200 "{UPSTREAM_BODY.strip()}\\n";
    }}"""
    return _nginx_argv(prefix, _nginx_main(prefix, body))


# Python systems


def floor_command(ctx: Context, port: int) -> list[str]:
    return [ctx.python, "-m", "bench.floor", "--listen", f"{LOOPBACK}:{port}"]


def bare_command(ctx: Context, port: int, parser: str = "aiohttp") -> list[str]:
    argv = [ctx.python, "-m", "bench.bare_protocol", "--listen", f"{LOOPBACK}:{port}"]
    if ctx.upstream_port is not None:
        argv += ["--upstream", f"{LOOPBACK}:{ctx.upstream_port}"]
    return [*argv, "--allow", ALLOWED_HOST, "--allow", ENV_HOSTNAME, "--parser", parser]


def bare_httptools_command(ctx: Context, port: int) -> list[str]:
    return bare_command(ctx, port, "httptools")


def gateway_config(ctx: Context, port: int) -> dict[str, object]:
    """The gateway config (contract §1): one environment, one listener, refusals by the
    environment's enforcement (it is the listener's default environment)."""
    upstream = ctx.upstream_port if ctx.upstream_port is not None else free_port()
    return {
        "environments": [
            {
                "name": "bench",
                "hostname": ENV_HOSTNAME,
                "secure_endpoints": [ALLOWED_HOST],
                "upstreams": [f"http://{LOOPBACK}:{upstream}"],
            }
        ],
        "listeners": [
            {
                "name": "bench",
                "bind": f"{LOOPBACK}:{port}",
                "environments": ["bench"],
                "default_environment": "bench",
            }
        ],
    }


def gateway_command(engine: str, interpreted: bool = False) -> Callable[[Context, int], list[str]]:
    def command(ctx: Context, port: int) -> list[str]:
        config_path = ctx.run_dir / f"gateway-{engine}{'-py' if interpreted else ''}.json"
        config_path.write_text(json.dumps(gateway_config(ctx, port), indent=2))
        # (env execs the interpreter: the process measured is still the gateway's)
        prefix = ["env", "GATEWAY_NO_EXTENSIONS=1"] if interpreted else []
        return [
            *prefix,
            ctx.python,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config_path),
            "--admin-listen",
            f"{LOOPBACK}:{free_port()}",
            "--engine",
            engine,
        ]

    return command


BOTH = ("refused", "proxied")

SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        SystemSpec(
            "nginx",
            "nginx-light, 1 worker, same job (the reference)",
            BOTH,
            nginx_sut_command,
            needs_nginx=True,
        ),
        SystemSpec(
            "aiohttp-floor",
            "aiohttp low-level web.Server, fixed 503 (no Host check)",
            ("refused",),
            floor_command,
        ),
        SystemSpec(
            "bare-protocol",
            "uvloop Protocol + aiohttp C parser; forwarding sketch",
            BOTH,
            bare_command,
        ),
        SystemSpec(
            "bare-httptools",
            "the bare sketch on httptools' request parser (what aiohttp's parser costs)",
            BOTH,
            bare_httptools_command,
            default=False,
        ),
        SystemSpec(
            "gateway-aiohttp",
            "the gateway, --engine aiohttp",
            BOTH,
            gateway_command("aiohttp"),
            startup_timeout=30.0,
        ),
        SystemSpec(
            "gateway-fast",
            f"the gateway, --engine fast, {engine_class()[1]} build",
            BOTH,
            gateway_command("fast"),
            startup_timeout=30.0,
        ),
        SystemSpec(
            "gateway-fast-py",
            "the gateway, --engine fast, interpreted (GATEWAY_NO_EXTENSIONS=1)",
            BOTH,
            gateway_command("fast", interpreted=True),
            startup_timeout=30.0,
        ),
    )
}

UPSTREAM = SystemSpec(
    "upstream", "nginx, 1 worker, 200 'ok'", (), nginx_upstream_command, needs_nginx=True
)


def start(
    spec: SystemSpec, ctx: Context, pin: Callable[[list[str]], list[str]], state: SystemState
) -> ManagedProcess:
    """Start a system and wait until it accepts connections; raise StartError otherwise.

    One retry on a new port when the first one was taken meanwhile."""
    if spec.needs_nginx and not have_nginx():
        raise StartError(f"{NGINX} not found (scripts/ensure-apt.sh nginx:nginx-light)")
    for attempt in range(2):
        port = free_port()
        argv = pin(spec.command(ctx, port))
        proc = ManagedProcess(f"{spec.name}-{attempt}" if attempt else spec.name, argv, ctx.run_dir)
        state.command, state.port = argv, port
        proc.start()
        state.pid = proc.pid
        try:
            proc.wait_ready(port, spec.startup_timeout)
        except StartError as exc:
            proc.stop()
            if attempt == 0 and "in use" in str(exc).lower():
                continue
            raise
        return proc
    raise AssertionError("unreachable")


def looks_unavailable(error: str) -> bool:
    """An engine or option the gateway does not have (yet): a usage error at start-up,
    as opposed to a gateway that crashed or refused its config."""
    lowered = error.lower()
    return "exited with code 2" in lowered and any(
        marker in lowered
        for marker in ("unknown engine", "invalid choice", "unrecognized arguments")
    )


def probe(port: int, host: str, timeout: float = 3.0) -> tuple[int, str]:
    """One request with a raw socket: (status, body head). Checks a system does the job
    before its figures are believed (a 502 storm measures fast, and means nothing)."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii")
    chunks: list[bytes] = []
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    status_line, _, rest = data.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {data[:80]!r}")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(parts[1]), body[:80].decode("utf-8", "replace")


def have_nginx() -> bool:
    return os.access(NGINX, os.X_OK)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None
