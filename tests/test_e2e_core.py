"""The real gateway, started by its CLI on port 0, in front of a real upstream on loopback,
talked to through real sockets with raw bytes (an HTTP client would tidy the input)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    Gateway,
    Upstream,
    get,
    metric_sum,
    raw_request,
    read_response,
    start_gateway,
)
from vectors_util import CASES, case_id, config_for

CONFIGS = sorted({c["config"] for c in CASES})


@pytest.fixture(scope="module")
def gateways(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Gateway]]:
    gws = {}
    try:
        for name in CONFIGS:
            tmp = tmp_path_factory.mktemp(name)
            gws[name] = start_gateway(config_for(name, upstream.url), tmp)
        yield gws
    finally:
        for gw in gws.values():
            gw.stop()


def request_bytes(case: dict[str, Any]) -> bytes:
    hosts = case["hosts"] if "hosts" in case else [case["host"]]
    lines = [f"{case.get('method', 'GET')} {case.get('target', '/vector')} HTTP/1.1".encode()]
    lines += [b"Host: " + h.encode("utf-8") for h in hosts]
    lines += [b"Connection: close", b"", b""]
    return b"\r\n".join(lines)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector_on_live_gateway(gateways: dict[str, Gateway], case: dict[str, Any]) -> None:
    gw = gateways[case["config"]]
    want = case["expect"]
    responses = raw_request(gw.port(), request_bytes(case))
    if want["action"] == "refuse" and want["status"] == 0:
        assert responses == [], "blocked_response close answers nothing"
        return
    assert len(responses) == 1, case["note"]
    resp = responses[0]
    if want["action"] == "forward":
        assert resp.status == 200, (case["note"], resp.body[:200])
        seen = resp.json()
        assert seen["upstream"] == "up1"
        sent_hosts = [v for k, v in seen["headers"] if k.lower() == "host"]
        assert len(sent_hosts) == 1
        if "upstream_host" in want:
            assert sent_hosts[0] == want["upstream_host"]
    else:
        assert resp.status == want["status"], (case["note"], resp.body[:200])
        assert resp.header("Cache-Control") == "no-store"
        request_id = resp.header("X-Request-ID")
        assert request_id and request_id.encode() in resp.body
        host = case.get("host") or ""
        if len(host) > 3:
            assert host.encode("utf-8") not in resp.body, "the raw Host is never echoed"


def test_unknown_host_page(gateways: dict[str, Gateway]) -> None:
    resp = get(gateways["single"].port(), "evil.example")
    assert resp.status == 503
    assert resp.body.startswith(b"Host header does not match")
    assert resp.header("X-Gateway-Config")


def test_http10_without_host_is_refused(gateways: dict[str, Gateway]) -> None:
    (resp,) = raw_request(gateways["single"].port(), b"GET / HTTP/1.0\r\n\r\n")
    assert resp.status == 400
    assert b"Host header is missing" in resp.body


def test_pipelined_requests_are_decided_each_on_its_own(gateways: dict[str, Gateway]) -> None:
    data = (
        b"GET /one HTTP/1.1\r\nHost: www.acme.com\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: a.shop.acme.com\r\nConnection: close\r\n\r\n"
    )
    r1, r2, r3 = raw_request(gateways["single"].port(), data, count=3)
    assert (r1.status, r2.status, r3.status) == (200, 503, 200)
    assert r1.json()["path"] == "/one"
    assert r3.json()["path"] == "/three"
    assert dict(map(tuple, r3.json()["headers"]))["Host"] == "a.shop.acme.com"


def test_absolute_form_is_forwarded_in_origin_form(gateways: dict[str, Gateway]) -> None:
    data = b"GET http://www.acme.com/p/q?x=1 HTTP/1.1\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n"
    (resp,) = raw_request(gateways["single"].port(), data)
    assert resp.status == 200
    assert resp.json()["path"] == "/p/q?x=1"


def test_headers_the_upstream_receives(gateways: dict[str, Gateway]) -> None:
    spoofed = [
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Server: evil",
        "X-Forwarded-Port: 1",
        "X-Forwarded-Proto: gopher",
        "X-Forwarded-Prefix: /evil",
        "X-Forwarded-Scheme: evil",
        "X-Forwarded-Ssl: on",
        "X-Original-Host: evil.example",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-Host: evil.example",
        "X-HTTP-Host-Override: evil.example",
        "X-Real-IP: 6.6.6.6",
        "Forwarded: host=evil.example;for=6.6.6.6",
        "X_Forwarded_Host: evil.example",
        "Custom_Header: x",
        "X-Forwarded-For: 6.6.6.6",
        "X-Request-ID: client-chosen",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Connection: close, X-Drop-Me",
        "X-Drop-Me: 1",
        "X-Keep-Me: yes",
        "Cookie: a=b",
    ]
    req = "GET /h HTTP/1.1\r\nHost: WWW.acme.com:8080\r\n" + "\r\n".join(spoofed) + "\r\n\r\n"
    (resp,) = raw_request(gateways["single"].port(), req.encode())
    assert resp.status == 200
    seen = resp.json()["headers"]
    names = [k.lower() for k, _ in seen]
    got = {k.lower(): v for k, v in seen}
    for h in spoofed:
        name = h.split(":")[0].lower()
        if name in ("x-forwarded-proto", "x-forwarded-for", "x-forwarded-host", "x-request-id"):
            continue  # replaced by the gateway's own values, checked below
        if name in ("x-keep-me", "cookie"):
            assert name in names
        else:
            assert name not in names, f"{name} must not reach the upstream"
    assert got["host"] == "www.acme.com:8080"
    assert got["x-forwarded-host"] == "www.acme.com:8080"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-request-id"] != "client-chosen"
    assert got["x-request-id"] == resp.header("X-Request-ID")
    assert names.count("host") == 1


def test_502_when_no_upstream_accepts(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed once the block ends: connections are refused
    gw = start_gateway(config_for("single", f"http://127.0.0.1:{dead}"), tmp_path)
    try:
        resp = get(gw.port(), "www.acme.com")
        assert resp.status == 502
        m = gw.metrics()
        assert metric_sum(m, "gateway_upstream_errors_total", kind="connect") >= 1
    finally:
        gw.stop()


def test_504_when_the_upstream_is_too_slow(upstream: Upstream, tmp_path: Path) -> None:
    cfg = config_for("single", upstream.url)
    cfg["environments"][0]["timeouts"] = {"read_s": 0.5}
    gw = start_gateway(cfg, tmp_path)
    try:
        t0 = time.monotonic()
        resp = get(gw.port(), "www.acme.com", "/__sleep/3")
        assert resp.status == 504
        assert time.monotonic() - t0 < 3
        assert get(gw.port(), "www.acme.com", "/__sleep/0.05").status == 200
        assert metric_sum(gw.metrics(), "gateway_upstream_errors_total", kind="timeout") == 1
    finally:
        gw.stop()


def test_round_robin_and_a_refusing_upstream_is_skipped(
    upstream: Upstream, upstream2: Upstream, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = config_for("single", upstream.url)
    cfg["environments"][0]["upstreams"] = [
        upstream.url,
        f"http://127.0.0.1:{dead}",
        upstream2.url,
    ]
    gw = start_gateway(cfg, tmp_path)
    try:
        seen = Counter(get(gw.port(), "www.acme.com").json()["upstream"] for _ in range(12))
        assert set(seen) == {"up1", "up2"}
        assert min(seen.values()) >= 4
    finally:
        gw.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_10mib_bodies_stream_both_ways(upstream: Upstream, tmp_path: Path) -> None:
    gw = start_gateway(config_for("single", upstream.url), tmp_path)
    try:
        pid = gw.proc.popen.pid
        get(gw.port(), "www.acme.com")  # warm up the upstream connection pool
        before = _rss_kb(pid)
        size = 10 * 1024 * 1024
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=30) as s:
            s.sendall(
                b"POST /upload HTTP/1.1\r\nHost: www.acme.com\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode()
            )
            block = b"y" * 65536
            for _ in range(size // len(block)):
                s.sendall(block)
            resp = read_response(s, bytearray())
        assert resp.status == 200
        assert resp.json()["body_bytes"] == size
        # chunked upload, then a 10 MiB download with and without Content-Length
        with socket.create_connection(("127.0.0.1", gw.port()), timeout=30) as s:
            s.sendall(
                b"POST /up2 HTTP/1.1\r\nHost: www.acme.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(size // 65536):
                s.sendall(b"10000\r\n" + b"z" * 65536 + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            buf = bytearray()
            resp = read_response(s, buf)
            assert resp.json()["body_bytes"] == size
            s.sendall(f"GET /__bytes/{size} HTTP/1.1\r\nHost: www.acme.com\r\n\r\n".encode())
            resp = read_response(s, buf)
            assert resp.status == 200 and len(resp.body) == size
            s.sendall(
                f"GET /__bytes/{size}?length=0 HTTP/1.1\r\nHost: www.acme.com\r\n\r\n".encode()
            )
            resp = read_response(s, buf)
            assert resp.status == 200 and len(resp.body) == size
        growth_mib = (_rss_kb(pid) - before) / 1024
        print(f"peak RSS growth over 40 MiB of bodies: {growth_mib:.1f} MiB")
        assert growth_mib < 5, f"gateway buffered bodies: peak RSS grew {growth_mib:.1f} MiB"
    finally:
        gw.stop()


def test_body_over_the_limit_is_refused_with_413(upstream: Upstream, tmp_path: Path) -> None:
    cfg = config_for("single", upstream.url)
    cfg["environments"][0]["limits"] = {"max_body_bytes": 1000}
    gw = start_gateway(cfg, tmp_path)
    try:
        data = (
            b"POST / HTTP/1.1\r\nHost: www.acme.com\r\nContent-Length: 1001\r\n\r\n" + b"a" * 1001
        )
        (resp,) = raw_request(gw.port(), data)
        assert resp.status == 413
        ok = (
            b"POST / HTTP/1.1\r\nHost: www.acme.com\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
            + b"a" * 1000
        )
        (resp,) = raw_request(gw.port(), ok)
        assert resp.status == 200
        m = gw.metrics()
        assert metric_sum(m, "gateway_requests_blocked_total", reason="body_too_large") == 1
        assert metric_sum(m, "gateway_requests_allowed_total") == 1
    finally:
        gw.stop()


def test_refused_body_is_never_parsed_as_a_request(upstream: Upstream, tmp_path: Path) -> None:
    gw = start_gateway(config_for("single", upstream.url), tmp_path)
    try:
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: www.acme.com\r\n\r\n"
        data = (
            b"POST / HTTP/1.1\r\nHost: evil.example\r\n"
            + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
            + smuggled
        )
        responses = raw_request(gw.port(), data, count=2, timeout=3)
        assert [r.status for r in responses] == [503]
        assert metric_sum(gw.metrics(), "gateway_requests_allowed_total") == 0
    finally:
        gw.stop()


def test_metrics_count_what_was_sent(upstream: Upstream, tmp_path: Path) -> None:
    gw = start_gateway(config_for("single", upstream.url), tmp_path)
    try:
        sent: Counter[tuple[str, str]] = Counter()
        plan = [
            ("www.acme.com", ("allowed", "endpoint")),
            ("acme-prod.example.net", ("allowed", "hostname")),
            ("x.shop.acme.com", ("allowed", "wildcard")),
            ("evil.example", ("blocked", "unknown_host")),
            ("a b", ("blocked", "malformed_host")),
        ]
        for i in range(50):
            host, key = plan[i % len(plan)]
            get(gw.port(), host)
            sent[key] += 1
        raw_request(gw.port(), b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        sent[("blocked", "duplicate_host")] += 1
        raw_request(gw.port(), b"GET / HTTP/1.1\r\n\r\n")
        sent[("blocked", "missing_host")] += 1
        raw_request(gw.port(), b"GET / HTTP/1.1\r\nHost: www.acme.com\r\nBad Header\r\n\r\n")
        sent[("blocked", "bad_request")] += 1
        m = gw.metrics()
        for (kind, label), n in sent.items():
            if kind == "allowed":
                got = metric_sum(
                    m, "gateway_requests_allowed_total", match=label, environment="production"
                )
            else:
                got = metric_sum(
                    m, "gateway_requests_blocked_total", reason=label, environment="production"
                )
            assert got == n, (kind, label)
        total = metric_sum(m, "gateway_requests_allowed_total") + metric_sum(
            m, "gateway_requests_blocked_total"
        )
        assert total == sum(sent.values())
        assert metric_sum(m, "gateway_upstream_responses_total", code_class="2xx") == 30
        assert metric_sum(m, "gateway_upstream_latency_seconds_count") == 30
        assert not any("evil.example" in str(labels) for (_, labels) in m)
    finally:
        gw.stop()


def test_health_path_is_answered_locally(upstream: Upstream, tmp_path: Path) -> None:
    cfg = config_for("nodefault", upstream.url)
    cfg["listeners"][0]["health_path"] = "/.well-known/gateway-health"
    gw = start_gateway(cfg, tmp_path)
    try:
        resp = get(gw.port(), "10.1.2.3", "/.well-known/gateway-health")
        assert resp.status == 200 and resp.body == b"ok\n"
        assert get(gw.port(), "10.1.2.3", "/other").status == 503
        assert get(gw.port(), "www.acme.com", "/.well-known/gateway-health-x").status == 200
    finally:
        gw.stop()


def test_admin_endpoints(gateways: dict[str, Gateway]) -> None:
    import urllib.request

    gw = gateways["single"]
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(gw.admin + path, timeout=5) as r:
            assert r.status == 200
    req = urllib.request.Request(gw.admin + "/metrics", headers={"Host": "10.0.0.1:9180"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert b"gateway_build_info" in r.read()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=st.binary(max_size=300))
def test_no_host_bytes_ever_get_a_500(gateways: dict[str, Gateway], value: bytes) -> None:
    data = b"GET / HTTP/1.1\r\nHost: " + value + b"\r\nConnection: close\r\n\r\n"
    responses = raw_request(gateways["single"].port(), data, count=3, timeout=5)
    for resp in responses:
        assert resp.status in (200, 400, 503), (value, resp.status)


def test_config_errors_stop_startup_with_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "environments": [
                    {
                        "name": "a",
                        "hostname": "a.example",
                        "upstreams": ["http://127.0.0.1:1"],
                        "secure_endpoints": ["ok.example", "*"],
                    }
                ]
            }
        )
    )
    p = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(bad), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, env={**os.environ},
    )  # fmt: skip
    assert p.returncode == 2
    assert "environments[0].secure_endpoints[1]" in p.stderr
