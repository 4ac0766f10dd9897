"""A real Prometheus scrapes a running gateway every second: every metric the dashboard
and the alert rules use exists, and every dashboard query returns data (issue 6)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import dashboard_queries as dq
import pytest
from support import PY, Proc, Upstream, get, raw_request, start_gateway, wait_until

from bench.proc import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def config(upstream: Upstream, dead: int, extra: str = "") -> dict[str, Any]:
    return {
        "environments": [
            {
                "name": "prod",
                "hostname": "prod.internal.example",
                "secure_endpoints": ["www.acme.com", "old.acme.com", *([extra] if extra else [])],
                "candidate_endpoints": ["www.acme.com", "new.acme.com"],
                "upstreams": [upstream.url],
            },
            {
                "name": "stage",
                "hostname": "stage.internal.example",
                "secure_endpoints": ["stage.acme.com"],
                "enforcement": "report",
                "upstreams": [upstream.url],
            },
            {
                "name": "broken",
                "hostname": "broken.internal.example",
                "upstreams": [f"http://127.0.0.1:{dead}"],
            },
        ],
        "listeners": [
            {"name": "public", "bind": "127.0.0.1:0", "environments": ["prod", "broken"],
             "default_environment": "prod"},
            {"name": "report", "bind": "127.0.0.1:0", "environments": ["stage"],
             "default_environment": "stage"},
            {"name": "lb", "bind": "127.0.0.1:0", "environments": ["prod"], "proxy_protocol": True},
        ],
    }  # fmt: skip


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_dashboard_and_alert_queries_return_data(upstream: Upstream, tmp_path: Path) -> None:
    assert Path(PROMETHEUS).exists(), "prometheus missing: `make test` installs the Debian package"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config(upstream, dead)))
    gw = start_gateway(path, tmp_path)
    prom_port = free_port()
    admin = gw.admin.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{dq.ALERTS_PATH}']\n"
        "scrape_configs:\n"
        f"  - job_name: gateway\n    static_configs: [{{targets: ['{admin}']}}]\n"
    )
    prom = Proc(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
    )
    url = f"http://127.0.0.1:{prom_port}"
    stop = threading.Event()

    def traffic() -> None:
        public, report, lb = gw.port("public"), gw.port("report"), gw.port("lb")
        while not stop.is_set():
            get(public, "www.acme.com")  # allowed endpoint
            get(public, "prod.internal.example")  # allowed hostname
            get(public, "evil.example")  # blocked unknown_host
            get(public, "old.acme.com")  # candidate: newly_blocked
            get(public, "new.acme.com")  # candidate: newly_allowed
            get(public, "a b")  # malformed
            get(public, "broken.internal.example")  # upstream connect error
            get(report, "unlisted.example")  # report mode: would block
            raw_request(lb, b"NOT A PROXY HEADER\r\n\r\n", timeout=2)  # connection refused
            time.sleep(0.05)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_until(lambda: _up(url), timeout=30)
        time.sleep(3)
        path.write_text(json.dumps(config(upstream, dead, "added.acme.com")))  # a reload
        time.sleep(2)
        path.write_text("{ broken")  # a failed reload
        time.sleep(2)
        path.write_text(json.dumps(config(upstream, dead, "again.acme.com")))
        time.sleep(4)
        # every metric the dashboard and alerts use exists in what Prometheus scraped
        names = set()
        for q in dq.all_queries():
            names |= dq.series_names(q.expr)
        missing = [n for n in sorted(names) if not query(url, f"count({n})")]
        assert missing == []
        # every dashboard query returns data
        empty = []
        for q in dq.dashboard_queries():
            expr = dq.concrete(q.expr, rate_interval="30s")
            if not query(url, expr):
                empty.append(f"{q.title}: {expr}")
        for q in dq.variable_queries():
            if not query(url, dq.concrete(q.expr)):
                empty.append(f"variable {q.title}: {q.expr}")
        assert empty == [], "\n".join(empty)
        # alert expressions are conditions, usually false; their selectors must have data
        for q in dq.alert_queries():
            for sel in dq.selectors(q.expr):
                assert query(url, f"count({dq.concrete(sel)})"), f"{q.title}: {sel}"
        # the report-mode alert fires on this traffic (its `for` is minutes, so: pending)
        alerts = json.loads(urllib.request.urlopen(url + "/api/v1/alerts", timeout=10).read())
        pending = {a["labels"]["alertname"] for a in alerts["data"]["alerts"]}
        print(f"\nalerts pending or firing: {sorted(pending)}")
        assert "GatewayWouldBlockInReportMode" in pending
    finally:
        stop.set()
        worker.join(20)
        prom.stop()
        gw.stop()


def _up(url: str) -> bool:
    try:
        return bool(query(url, 'up{job="gateway"} == 1'))
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _python_is_ours() -> None:
    assert PY
