"""Roll out safely (issue 6): report mode, candidate lists, top blocked hosts, refusal
logs, and a flood of distinct Host values against bounded memory and series."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import Upstream, get, metric_sum, rss_mib, running_gateway, wait_until

from gateway.tokens import entry_for, new_token

GATEWAY = str(Path(sys.executable).with_name("gateway"))
ADMIN, VIEWER = new_token(), new_token()


def cfg(upstream: Upstream) -> dict[str, Any]:
    return {
        "environments": [
            {
                "name": "prod",
                "hostname": "prod.internal.example",
                "secure_endpoints": ["www.acme.com", "old.acme.com", "keep.acme.com"],
                "candidate_endpoints": ["www.acme.com", "keep.acme.com", "new.acme.com"],
                "upstreams": [upstream.url],
            },
            {
                "name": "stage",
                "hostname": "stage.internal.example",
                "secure_endpoints": ["stage.acme.com"],
                "enforcement": "report",
                "upstreams": [upstream.url],
            },
        ],
        "listeners": [
            {"name": "public", "bind": "127.0.0.1:0", "environments": ["prod"], "default_environment": "prod"},
            {"name": "stage", "bind": "127.0.0.1:0", "environments": ["stage"], "default_environment": "stage"},
        ],
    }  # fmt: skip


def tokens_file(tmp: Path) -> Path:
    p = tmp / "tokens.json"
    p.write_text(
        json.dumps([entry_for("ops", "admin", ADMIN), entry_for("watch", "viewer", VIEWER)])
    )
    return p


def api(admin: str, method: str, path: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        admin + path, method=method, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_report_mode_and_candidate_disagreements(upstream: Upstream, tmp_path: Path) -> None:
    with running_gateway(cfg(upstream), tmp_path) as gw:
        stage, public = gw.port("stage"), gw.port("public")
        for _ in range(7):
            resp = get(stage, "unlisted.example")
            assert resp.status == 200, "report mode forwards unknown hosts"
            assert dict(map(tuple, resp.json()["headers"]))["Host"] == "unlisted.example"
        assert get(stage, "stage.acme.com").status == 200
        assert get(stage, "a b").status == 400, "Host checks apply in report mode too"
        mix = {
            "www.acme.com": 5,
            "old.acme.com": 3,
            "new.acme.com": 4,
            "keep.acme.com": 2,
            "evil.example": 6,
        }
        for host, n in mix.items():
            for _ in range(n):
                get(public, host)
        m = gw.metrics()
        assert (
            metric_sum(
                m, "gateway_requests_allowed_total", environment="stage", match="report_only"
            )
            == 7
        )
        assert (
            metric_sum(m, "gateway_requests_allowed_total", environment="stage", match="endpoint")
            == 1
        )
        assert (
            metric_sum(
                m,
                "gateway_candidate_disagreements_total",
                environment="prod",
                direction="newly_blocked",
            )
            == 3
        )
        assert (
            metric_sum(
                m,
                "gateway_candidate_disagreements_total",
                environment="prod",
                direction="newly_allowed",
            )
            == 4
        )
        assert metric_sum(m, "gateway_candidate_disagreements_total", environment="stage") == 0
        out = gw.proc.output()
        assert "would block (report mode)" in out and "unlisted.example" in out


def test_top_blocked_hosts_api_and_cli(upstream: Upstream, tmp_path: Path) -> None:
    hostile = "<img src=x onerror=alert(1)>.evil"
    with running_gateway(
        cfg(upstream), tmp_path, "--admin-tokens", str(tokens_file(tmp_path))
    ) as gw:
        public, stage = gw.port("public"), gw.port("stage")
        for i in range(30):
            get(public, "scanner.example")
            if i % 3 == 0:
                get(public, "printer.corp.example")
        get(stage, "would.example")
        with socket.create_connection(("127.0.0.1", public)) as s:  # a hostile raw value
            s.sendall(
                b"GET / HTTP/1.1\r\nHost: " + hostile.encode() + b"\r\nConnection: close\r\n\r\n"
            )
            s.recv(1000)
        status, body = api(gw.admin, "GET", "/api/v1/blocked-hosts", VIEWER)
        assert status == 200
        prod = body["environments"]["prod"]
        assert [(r["host"], r["count"]) for r in prod[:2]] == [
            ("scanner.example", 30),
            ("printer.corp.example", 10),
        ]
        assert prod[0]["reason"] == "unknown_host" and prod[0]["first_seen"] <= prod[0]["last_seen"]
        assert any(r["host"] == hostile and r["reason"] == "malformed_host" for r in prod)
        assert body["environments"]["stage"][0] == {
            **body["environments"]["stage"][0],
            "host": "would.example",
            "reason": "would_block",
        }
        cli = subprocess.run(
            [GATEWAY, "blocked-hosts", "--admin", gw.admin, "--token", VIEWER, "--environment", "prod"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert "scanner.example" in cli.stdout and "30" in cli.stdout
        assert "<img src=x onerror=alert(1)>.evil" in cli.stdout  # printable ASCII stays readable
        assert api(gw.admin, "DELETE", "/api/v1/blocked-hosts?environment=prod", VIEWER)[0] == 403
        # Every change is audited first: with the audit log unwritable, nothing is reset.
        audit = tmp_path / "config.json.audit.jsonl"
        audit.mkdir()
        status, body = api(gw.admin, "DELETE", "/api/v1/blocked-hosts?environment=prod", ADMIN)
        assert (status, body["reason"]) == (507, "audit_unwritable"), body
        assert api(gw.admin, "GET", "/api/v1/blocked-hosts", VIEWER)[1]["environments"]["prod"]
        audit.rmdir()
        assert api(gw.admin, "DELETE", "/api/v1/blocked-hosts?environment=prod", ADMIN)[0] == 200
        status, body = api(gw.admin, "GET", "/api/v1/blocked-hosts", VIEWER)
        assert body["environments"].get("prod", []) == [] and body["environments"]["stage"]
        last = api(gw.admin, "GET", "/api/v1/audit", VIEWER)[1]["records"][-1]
        assert last["action"] == "reset_blocked_hosts" and last["environment"] == "prod"
        assert last["time"].endswith("Z") and last["token"], last
        assert api(gw.admin, "GET", "/api/v1/blocked-hosts?environment=nope", VIEWER)[0] == 404


def test_refusal_log_is_rate_limited(upstream: Upstream, tmp_path: Path) -> None:
    with running_gateway(cfg(upstream), tmp_path) as gw:
        port = gw.port("public")
        with socket.create_connection(("127.0.0.1", port)) as s:
            burst = b"".join(
                b"GET / HTTP/1.1\r\nHost: flood%d.example\r\n\r\n" % i for i in range(600)
            )
            s.sendall(burst)
            got = b""
            while got.count(b"HTTP/1.1 503") < 600:
                got += s.recv(65536)
        lines = [
            json.loads(x) for x in gw.proc.lines if x.startswith("{") and '"gateway.refusals"' in x
        ]
        refused = [x for x in lines if x["message"] == "refused"]
        assert 50 <= len(refused) <= 150, len(refused)  # the burst of the token bucket, not 600
        first = refused[0]
        assert {
            "request_id",
            "listener",
            "environment",
            "reason",
            "host",
            "client",
            "config",
        } <= set(first)
        wait_until(lambda: any("suppressed" in x for x in gw.proc.lines), timeout=20)


def test_a_flood_of_distinct_hosts_keeps_series_and_memory_bounded(
    upstream: Upstream, tmp_path: Path
) -> None:
    # 1,000,000 in the documented full run (GATEWAY_FLOOD_N=1000000 make soak); fewer here.
    n = int(os.environ.get("GATEWAY_FLOOD_N", "100000"))
    with running_gateway(
        cfg(upstream), tmp_path, "--admin-tokens", str(tokens_file(tmp_path))
    ) as gw:
        port, pid = gw.port("public"), gw.proc.popen.pid

        def rss_kb() -> int:
            return int(rss_mib(pid) * 1024)

        def series() -> int:
            with urllib.request.urlopen(gw.admin + "/metrics", timeout=10) as r:
                return sum(1 for x in r.read().decode().splitlines() if x and not x.startswith("#"))

        _send_pipelined(port, [f"warm{i}.example" for i in range(5000)] + ["heavy.example"] * 500)
        base_series, base_rss = series(), rss_kb()
        t0 = time.monotonic()
        batch = 5000
        for start in range(0, n, batch):
            hosts = [f"h{start + i:x}-{os.urandom(4).hex()}.example" for i in range(batch)]
            hosts += ["heavy.example"] * 50
            _send_pipelined(port, hosts)
            if start // batch % 5 == 0:
                print(
                    f"  flood: {start + batch}/{n} distinct hosts, RSS {rss_kb() / 1024:.1f} MiB",
                    flush=True,
                )
        took = time.monotonic() - t0
        growth = (rss_kb() - base_rss) / 1024
        print(
            f"\n{n} distinct Host values in {took:.0f}s: RSS growth {growth:.1f} MiB, series {base_series} -> {series()}"
        )
        assert series() == base_series
        assert growth < 30
        status, body = api(
            gw.admin, "GET", "/api/v1/blocked-hosts?environment=prod&limit=1000", VIEWER
        )
        assert status == 200
        rows = body["environments"]["prod"]
        assert len(rows) <= 100
        assert rows[0]["host"] == "heavy.example"
        m = gw.metrics()
        assert metric_sum(m, "gateway_requests_blocked_total", reason="unknown_host") >= n


def _send_pipelined(port: int, hosts: list[str]) -> None:
    """Pipelined keep-alive requests on one connection, read until every answer is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"".join(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % h.encode() for h in hosts))
        want, got, tail = len(hosts), 0, b""
        while got < want:
            data = s.recv(1 << 20)
            if not data:
                raise AssertionError(f"connection closed after {got}/{want} responses")
            # the 8-byte tail can hold part of a status line cut by recv, never a whole one
            chunk = tail + data
            got += chunk.count(b"HTTP/1.1 ")
            tail = chunk[-8:]
