"""The admin API of contract §4, over real HTTP against a real ``gateway run`` process.

One gateway (module scope) serves most tests; each test works on its own hosts or its own
environment so that they do not depend on each other's order. Gateways with other
settings (management: external, no tokens file) are started where needed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import Gateway, Upstream, get, start_gateway, wait_until

from gateway.tokens import Identity, entry_for, new_token

GATEWAY = str(Path(sys.executable).with_name("gateway"))
TOKENS = {name: new_token() for name in ("alice", "carol", "bob")}
ROLES = {"alice": "admin", "carol": "admin", "bob": "viewer"}
CONC_OLD = [f"r{i}.conc.test" for i in range(10)]
CLIENTS = ("alice", "carol", "alice", "carol", "alice")  # 5 concurrent API clients


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    gw: Gateway,
    method: str,
    path: str,
    who: str | None = "alice",
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Resp:
    """``raw``: the body's bytes as given. http.client sends header values as Latin-1, so
    "\xff" in a value is the byte 0xff on the wire (not UTF-8)."""
    h = dict(headers or {})
    if who is not None:
        h["Authorization"] = f"Bearer {TOKENS[who]}"
    data = json.dumps(body).encode() if body is not None else raw
    req = urllib.request.Request(gw.admin + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    ctype = hdrs.get("Content-Type", "")
    return Resp(status, hdrs, json.loads(raw) if "json" in ctype else raw.decode())


def write_tokens(path: Path, names: list[str]) -> None:
    path.write_text(json.dumps([entry_for(n, ROLES.get(n, "viewer"), TOKENS[n]) for n in names]))


def config(upstream: Upstream, **top: Any) -> dict[str, Any]:
    up = [upstream.url]
    return {
        "environments": [
            {"name": "prod", "hostname": "prod.example.net", "secure_endpoints": ["www.acme.test"], "upstreams": up},
            {
                "name": "staging",
                "hostname": "staging.example.net",
                "secure_endpoints": ["old.staging.test"],
                "candidate_endpoints": ["new.staging.test", "Two.Staging.test"],
                "enforcement": "report",
                "upstreams": up,
            },
            {"name": "lifetime", "hostname": "lt.example.net", "locked": True, "upstreams": up},
            {"name": "conc", "hostname": "conc.example.net", "secure_endpoints": CONC_OLD, "upstreams": up},
        ],
        "listeners": [
            {
                "name": "public",
                "bind": "127.0.0.1:0",
                "environments": ["prod", "staging", "lifetime", "conc"],
                "default_environment": "prod",
            }
        ],
        **top,
    }  # fmt: skip


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("admin")
    tokens = tmp / "tokens.json"
    write_tokens(tokens, ["alice", "carol", "bob"])
    g = start_gateway(config(upstream), tmp, "--admin-tokens", str(tokens))
    yield g
    g.stop()


def audit_file(gw: Gateway) -> list[dict[str, Any]]:
    p = Path(str(gw.config_path) + ".audit.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def live_sha(gw: Gateway) -> str:
    sha: str = call(gw, "GET", "/api/v1/environments", "bob").body["config_sha256"]
    return sha


def file_entries(gw: Gateway, env: str) -> list[str]:
    data = json.loads(gw.config_path.read_text())
    return next(e for e in data["environments"] if e["name"] == env).get("secure_endpoints", [])


# -- auth -------------------------------------------------------------------------------


def test_401_403_and_open_probes(gw: Gateway) -> None:
    r = call(gw, "GET", "/api/v1/environments", who=None)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = call(gw, "GET", "/api/v1/environments", who=None, headers={"Authorization": "Bearer nope"})
    assert r.status == 401 and r.body["reason"] == "unauthenticated"
    assert call(gw, "GET", "/api/v1/environments", "bob").status == 200
    r = call(gw, "POST", "/api/v1/environments/prod/endpoints", "bob", {"host": "v.acme.test"})
    assert r.status == 403 and "viewer" in r.body["error"]
    assert call(gw, "POST", "/api/v1/reload", "bob").status == 403
    for path in ("/metrics", "/healthz", "/readyz"):
        assert call(gw, "GET", path, who=None).status == 200
    # DNS rebinding guard: the API answers only to local names.
    r = call(gw, "GET", "/api/v1/environments", "bob", headers={"Host": "evil.test"})
    assert r.status == 421


def test_tokens_file_is_reloaded(gw: Gateway, tmp_path: Path) -> None:
    tokens = Path(gw.proc.args[gw.proc.args.index("--admin-tokens") + 1])
    TOKENS["dave"] = new_token()
    try:
        assert call(gw, "GET", "/api/v1/environments", "dave").status == 401
        write_tokens(tokens, ["alice", "carol", "dave"])  # bob revoked, dave added
        assert call(gw, "GET", "/api/v1/environments", "dave").status == 200
        assert call(gw, "GET", "/api/v1/environments", "bob").status == 401
    finally:
        write_tokens(tokens, ["alice", "carol", "bob"])
    assert call(gw, "GET", "/api/v1/environments", "bob").status == 200


# -- reads ------------------------------------------------------------------------------


def test_read_environments_explain_audit(gw: Gateway) -> None:
    r = call(gw, "GET", "/api/v1/environments", "bob")
    assert r.status == 200 and r.headers["ETag"] == f'"{r.body["config_sha256"]}"'
    assert [e["name"] for e in r.body["environments"]] == ["prod", "staging", "lifetime", "conc"]
    r = call(gw, "GET", "/api/v1/environments/lifetime", "bob")
    assert r.status == 200 and r.body["locked"] is True and r.body["hostname"] == "lt.example.net"
    assert call(gw, "GET", "/api/v1/environments/nope", "bob").status == 404
    r = call(gw, "GET", "/api/v1/explain?host=WWW.acme.test.&listener=public", "bob")
    assert r.status == 200 and r.body["action"] == "forward" and r.body["environment"] == "prod"
    assert r.body["normalised"] == "www.acme.test"
    assert call(gw, "GET", "/api/v1/explain?host=x&listener=nope", "bob").status == 404
    r = call(gw, "GET", "/api/v1/audit?limit=5", "bob")
    assert r.status == 200 and isinstance(r.body["records"], list)
    assert call(gw, "GET", "/api/v1/audit?limit=0", "bob").status == 400
    assert call(gw, "GET", "/api/v1/nope", "bob").status == 404


def test_reload(gw: Gateway) -> None:
    r = call(gw, "POST", "/api/v1/reload", "alice")
    assert r.status == 200 and r.body["ok"] is True


# -- writes -----------------------------------------------------------------------------


def test_add_and_remove_round_trip_with_audit(gw: Gateway) -> None:
    r = call(gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": "Add.Acme.test."})
    assert r.status == 200, r.body
    assert r.body["changed"] is True and r.body["values"] == ["add.acme.test"]
    assert "add.acme.test" in r.body["environment"]["secure_endpoints"]
    assert r.headers["ETag"] == f'"{r.body["config_sha256"]}"'
    assert r.body["config_sha256"] == live_sha(gw)
    assert "add.acme.test" in file_entries(gw, "prod")
    last = audit_file(gw)[-1]
    assert (last["token"], last["role"], last["environment"], last["action"]) == (
        "alice",
        "admin",
        "prod",
        "add",
    )
    assert last["values"] == ["add.acme.test"]
    assert last["sha256_before"] == r.body["sha256_before"]
    assert last["sha256_after"] == r.body["config_sha256"]
    assert call(gw, "GET", "/api/v1/audit?limit=1", "bob").body["records"] == [last]

    again = call(gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": "add.acme.test"})
    assert again.status == 200 and again.body["changed"] is False

    ipv6 = "[2001:DB8::1]:8443"
    assert call(gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": ipv6}).body[
        "changed"
    ]
    quoted = urllib.parse.quote("[2001:db8::1]:8443", safe="")
    assert quoted == "%5B2001%3Adb8%3A%3A1%5D%3A8443"
    for host in ("add.acme.test", quoted):
        r = call(gw, "DELETE", f"/api/v1/environments/prod/endpoints/{host}")
        assert r.status == 200 and r.body["changed"] is True
        r = call(gw, "DELETE", f"/api/v1/environments/prod/endpoints/{host}")
        assert r.status == 200 and r.body["changed"] is False
    assert file_entries(gw, "prod") == ["www.acme.test"]


def test_replace_needs_if_match(gw: Gateway) -> None:
    path = "/api/v1/environments/prod/endpoints"
    body = {"secure_endpoints": ["www.acme.test", "r1.acme.test"]}
    r = call(gw, "PUT", path, body=body)
    assert r.status == 428 and "If-Match" in r.body["error"]
    etag = call(gw, "GET", "/api/v1/environments/prod", "bob").headers["ETag"]
    r = call(gw, "PUT", path, body=body, headers={"If-Match": etag})
    assert r.status == 200 and r.body["environment"]["secure_endpoints"] == body["secure_endpoints"]
    r = call(gw, "PUT", path, body={"secure_endpoints": ["x.test"]}, headers={"If-Match": etag})
    assert r.status == 412 and r.body["reason"] == "stale"
    # If-Match is honoured on the other writes too.
    r = call(gw, "POST", path, body={"host": "y.test"}, headers={"If-Match": etag})
    assert r.status == 412
    etag = call(gw, "GET", "/api/v1/environments/prod", "bob").headers["ETag"]
    r2 = call(
        gw, "PUT", path, body={"secure_endpoints": ["www.acme.test"]}, headers={"If-Match": etag}
    )
    assert r2.status == 200 and file_entries(gw, "prod") == ["www.acme.test"]


def test_enforcement_switch(gw: Gateway) -> None:
    path = "/api/v1/environments/prod/enforcement"
    r = call(gw, "PUT", path, body={"enforcement": "report"})
    assert r.status == 200 and r.body["changed"] is True and r.body["previous"] == "enforce"
    explained = call(gw, "GET", "/api/v1/explain?host=unknown.test&listener=public", "bob").body
    assert explained["action"] == "forward" and explained["would_block"] is True
    assert call(gw, "PUT", path, body={"enforcement": "report"}).body["changed"] is False
    r = call(gw, "PUT", path, body={"enforcement": "block"})
    assert r.status == 422
    assert call(gw, "PUT", path, body={"enforcement": "enforce"}).status == 200
    explained = call(gw, "GET", "/api/v1/explain?host=unknown.test&listener=public", "bob").body
    assert explained["action"] == "refuse"


def test_candidate_promotion(gw: Gateway) -> None:
    path = "/api/v1/environments/staging/candidate/promote"
    r = call(gw, "POST", path)
    assert r.status == 200, r.body
    assert r.body["environment"]["secure_endpoints"] == ["new.staging.test", "two.staging.test"]
    assert r.body["environment"]["candidate_endpoints"] is None
    assert r.body["added"] == ["new.staging.test", "two.staging.test"]
    assert r.body["removed"] == ["old.staging.test"]
    assert audit_file(gw)[-1]["action"] == "promote"
    r = call(gw, "POST", path)
    assert r.status == 409 and r.body["reason"] == "no_candidate"


def test_invalid_host_unknown_env_locked_bad_body(gw: Gateway) -> None:
    before = gw.config_path.read_bytes()
    lines = len(audit_file(gw))
    r = call(gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": "*.com"})
    assert r.status == 422 and r.body["errors"][0].startswith("environments[0].secure_endpoints[1]")
    r = call(gw, "PUT", "/api/v1/environments/prod/endpoints", body={"secure_endpoints": ["a b"]},
             headers={"If-Match": "*"})  # fmt: skip
    assert r.status == 422
    # Valid alone, but staging's hostname is claimed on the same listener: whole-file check.
    r = call(
        gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": "staging.example.net"}
    )
    assert r.status == 422 and "claimed by both" in r.body["error"]
    assert call(gw, "DELETE", "/api/v1/environments/prod/endpoints/a%20b").status == 422
    assert (
        call(gw, "POST", "/api/v1/environments/nope/endpoints", body={"host": "a.test"}).status
        == 404
    )
    for method, suffix, body in (
        ("POST", "/endpoints", {"host": "a.test"}),
        ("DELETE", "/endpoints/lt.acme.test", None),
        ("PUT", "/enforcement", {"enforcement": "off"}),
        ("POST", "/candidate/promote", None),
    ):
        r = call(
            gw,
            method,
            "/api/v1/environments/lifetime" + suffix,
            body=body,
            headers={"If-Match": "*"},
        )
        assert r.status == 403 and r.body["reason"] == "locked", (method, suffix)
    assert call(gw, "POST", "/api/v1/environments/prod/endpoints", body=["a.test"]).status == 400
    req = urllib.request.Request(
        gw.admin + "/api/v1/environments/prod/endpoints",
        data=b"{not json",
        method="POST",
        headers={"Authorization": f"Bearer {TOKENS['alice']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 400
    assert gw.config_path.read_bytes() == before and len(audit_file(gw)) == lines


def test_read_only_file_refused(gw: Gateway) -> None:
    before = gw.config_path.read_bytes()
    gw.config_path.chmod(0o444)
    try:
        r = call(gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": "ro.acme.test"})
        assert r.status == 507 and "read-only" in r.body["error"]
        assert gw.config_path.read_bytes() == before
    finally:
        gw.config_path.chmod(0o644)


def test_change_is_live_when_the_call_returns(gw: Gateway) -> None:
    port = gw.port("public")
    assert get(port, "pass.acme.test").status == 503
    r = call(gw, "POST", "/api/v1/environments/prod/endpoints", body={"host": "pass.acme.test"})
    assert r.status == 200
    forwarded = get(port, "pass.acme.test")
    assert forwarded.status == 200 and forwarded.json()["upstream"] == "up1"
    r = call(gw, "DELETE", "/api/v1/environments/prod/endpoints/pass.acme.test")
    assert r.status == 200
    assert get(port, "pass.acme.test").status == 503


async def test_concurrent_api_and_cli_lose_nothing(gw: Gateway) -> None:
    """50 API calls from 5 clients at once, with CLI processes editing meanwhile: every
    change lands, each has exactly one audit line, and the lines form one chain."""
    start = len(audit_file(gw))
    adds = [f"a{i}.conc.test" for i in range(40)]
    cli_adds = [f"c{i}.conc.test" for i in range(4)]
    base = gw.admin + "/api/v1/environments/conc/endpoints"
    sessions = [
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKENS[n]}"}) for n in CLIENTS
    ]

    async def api(i: int, method: str, host: str) -> dict[str, Any]:
        s = sessions[i % len(sessions)]
        url = base if method == "POST" else f"{base}/{host}"
        kw = {"json": {"host": host}} if method == "POST" else {}
        async with s.request(method, url, timeout=aiohttp.ClientTimeout(total=60), **kw) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 200, body
            return body

    async def cli(host: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            GATEWAY, "endpoints", "add", "--config", str(gw.config_path), "conc", host,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        return proc.returncode

    calls = [("POST", h) for h in adds] + [("DELETE", h) for h in CONC_OLD]
    calls = calls[::2] + calls[1::2]  # interleave adds and removes
    try:
        results = await asyncio.gather(
            *(api(i, m, h) for i, (m, h) in enumerate(calls)), *(cli(h) for h in cli_adds)
        )
    finally:
        for s in sessions:
            await s.close()
    assert all(r["changed"] is True for r in results[: len(calls)])

    expected = set(adds) | set(cli_adds)
    assert set(file_entries(gw, "conc")) == expected and len(file_entries(gw, "conc")) == 44
    # CLI edits reach the running gateway through its file watch, a moment after they
    # return (API writes answer only once live; a CLI process cannot wait for that).
    took = wait_until(
        lambda: (
            set(call(gw, "GET", "/api/v1/environments/conc", "bob").body["secure_endpoints"])
            == expected
        ),
        timeout=15,
    )
    print(f"CLI edits live {took:.2f}s after the last call returned")

    lines = audit_file(gw)[start:]
    assert len(lines) == len(calls) + len(cli_adds)
    expected_lines = [
        ("add" if m == "POST" else "remove", h, CLIENTS[i % len(CLIENTS)])
        for i, (m, h) in enumerate(calls)
    ] + [("add", h, "cli") for h in cli_adds]
    got = [
        (x["action"], x["values"][0], "cli" if x["token"].startswith("cli:") else x["token"])
        for x in lines
    ]
    assert sorted(got) == sorted(expected_lines)
    for prev, nxt in itertools.pairwise(lines):
        assert nxt["sha256_before"] == prev["sha256_after"]


# -- other gateways ---------------------------------------------------------------------


def test_external_management_refuses_every_write(upstream: Upstream, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    write_tokens(tokens, ["alice", "bob"])
    g = start_gateway(
        config(upstream, management="external"), tmp_path, "--admin-tokens", str(tokens)
    )
    try:
        before = g.config_path.read_bytes()
        env = "/api/v1/environments/prod"
        for method, path, body, headers in (
            ("POST", env + "/endpoints", {"host": "a.test"}, {}),
            ("DELETE", env + "/endpoints/www.acme.test", None, {}),
            ("PUT", env + "/endpoints", {"secure_endpoints": []}, {"If-Match": "*"}),
            ("PUT", env + "/enforcement", {"enforcement": "off"}, {}),
            ("POST", "/api/v1/environments/staging/candidate/promote", None, {}),
        ):
            r = call(g, method, path, body=body, headers=headers)
            assert r.status == 409, (method, path, r.body)
            assert "managed externally" in r.body["error"] and str(g.config_path) in r.body["error"]
        assert g.config_path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "tokens.json"]
        r = call(g, "GET", "/api/v1/environments", "bob")
        assert r.status == 200 and r.body["management"] == "external"
    finally:
        g.stop()


def test_without_tokens_file(upstream: Upstream, tmp_path: Path) -> None:
    g = start_gateway(config(upstream), tmp_path)
    try:
        assert call(g, "GET", "/api/v1/environments", who=None).status == 200  # loopback
        r = call(
            g, "POST", "/api/v1/environments/prod/endpoints", who=None, body={"host": "a.test"}
        )
        assert r.status == 403 and "--admin-tokens" in r.body["error"]
        assert call(g, "POST", "/api/v1/reload", who=None).status == 200  # loopback caller
    finally:
        g.stop()


# -- in-process: token parsing, and the "not live in time" answer -------------------------


def test_tokens_file_validation_and_bearer_parsing(tmp_path: Path) -> None:
    from gateway.tokens import TokensError, TokenStore, parse_tokens

    for bad, why in (
        (b'[{"name": "x", "role": "root", "sha256": "' + b"0" * 64 + b'"}]', "[0].role"),
        (b'[{"name": "x", "role": "admin", "sha256": "00"}]', "[0].sha256"),
        (b'[{"name": "x", "role": "admin", "sha256": "' + b"0" * 64 + b'", "x": 1}]', "x"),
        (b"{}", "array"),
    ):
        with pytest.raises(TokensError, match=re.escape(why)):
            parse_tokens(bad)
    path = tmp_path / "t.json"
    TOKENS["erin"] = new_token()
    write_tokens(path, ["alice", "bob"])
    store = TokenStore(str(path))
    assert store.authenticate(f"Bearer {TOKENS['alice']}") == Identity("alice", "admin")
    assert store.authenticate(f"bearer  {TOKENS['bob']} ") == Identity("bob", "viewer")
    assert store.authenticate(f"Basic {TOKENS['alice']}") is None
    assert store.authenticate("Bearer " + TOKENS["erin"]) is None
    assert store.authenticate(None) is None
    path.write_text("not json")  # a broken edit keeps the last good tokens
    assert store.authenticate(f"Bearer {TOKENS['alice']}") == Identity("alice", "admin")
    with pytest.raises(TokensError):
        TokenStore(str(tmp_path / "missing.json"))


async def test_write_that_does_not_go_live_says_so(tmp_path: Path, aiohttp_client: Any) -> None:
    from gateway.admin import AdminApp
    from gateway.config import load_file
    from gateway.metrics import WorkerStats
    from gateway.runtime import Runtime

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config(Upstream(None, 9))))  # type: ignore[arg-type]
    tokens = tmp_path / "tokens.json"
    write_tokens(tokens, ["alice"])
    runtime = Runtime(load_file(str(cfg)))
    # No reloader and nobody reloading: the write lands in the file but never goes live.
    admin = AdminApp(
        runtime,
        None,
        "test",
        WorkerStats,
        "127.0.0.1",
        admin_tokens=str(tokens),
        config_path=str(cfg),
        write_timeout_s=0.2,
    )
    client = await aiohttp_client(admin.app)
    r = await client.post(
        "/api/v1/environments/prod/endpoints",
        json={"host": "late.acme.test"},
        headers={"Authorization": f"Bearer {TOKENS['alice']}"},
    )
    body = await r.json()
    assert r.status == 504 and body["reason"] == "not_live" and body["changed"] is True
    assert "written to" in body["error"] and "not serving it yet" in body["error"]
    assert body["config_sha256_live"] == runtime.snapshot.sha256
    assert body["config_sha256_written"] != runtime.snapshot.sha256
    assert "late.acme.test" in json.loads(cfg.read_text())["environments"][0]["secure_endpoints"]


# -- bad input of every kind: a clear 4xx, nothing changed, never a 500 ---------------------


def test_header_bytes_that_are_not_utf8(gw: Gateway) -> None:
    """aiohttp hands such bytes over with surrogateescape: hashing the token and quoting
    If-Match in the answer must not fail on them (they did: 500)."""
    before = gw.config_path.read_bytes()
    r = call(gw, "GET", "/api/v1/whoami", None, headers={"Authorization": "Bearer \xff\xfe"})
    assert r.status == 401 and r.body["reason"] == "unauthenticated"
    r = call(gw, "POST", "/api/v1/environments/prod/endpoints", raw=b'{"host": "q.acme.test"}',
             headers={"If-Match": "\xff"})  # fmt: skip
    assert r.status == 412 and r.body["reason"] == "stale", r.body
    assert "\\udcff" in r.body["error"]  # quoted, escaped, not dropped
    assert gw.config_path.read_bytes() == before


def test_bodies_that_cannot_be_read_or_say_two_things(gw: Gateway) -> None:
    before = gw.config_path.read_bytes()
    lines = len(audit_file(gw))
    path = "/api/v1/environments/prod/endpoints"
    for encoding in ("gzip", "deflate", "br"):  # the body does not follow its encoding
        r = call(
            gw, "POST", path, raw=b'{"host": "x.acme.test"}', headers={"Content-Encoding": encoding}
        )
        assert r.status == 400 and r.body["reason"] == "bad_request", (encoding, r.body)
    cases = [
        (b'{"host": "a.dup.test", "host": "b.dup.test"}', "'host' appears twice"),
        (b'{"host": "a.acme.test", "extra": 1}', "unknown key 'extra'"),
        (b'{"hosts": ["a.acme.test"], "comment": "x"}', "unknown key 'comment'"),
        (b'{"host": "a.acme.test", "x": NaN}', "NaN"),
        (b'\xff{"host": "a.acme.test"}', "not UTF-8"),
        (b"", "empty"),
    ]
    for body, why in cases:
        r = call(gw, "POST", path, raw=body)
        assert r.status == 400 and why in r.body["error"], (body, r.body)
    r = call(gw, "PUT", "/api/v1/environments/prod/enforcement",
             raw=b'{"enforcement": "enforce", "enforcement": "off"}')  # fmt: skip
    assert r.status == 400 and "'enforcement' appears twice" in r.body["error"]
    assert gw.config_path.read_bytes() == before and len(audit_file(gw)) == lines


def test_query_limits_and_error_reasons(gw: Gateway) -> None:
    for path in ("/api/v1/blocked-hosts", "/api/v1/audit"):
        for limit in ("-5", "0", "%EF%BC%95", "+5", "%205", "x", "99999999"):
            r = call(gw, "GET", f"{path}?limit={limit}", "bob")
            assert r.status == 400 and r.body["reason"] == "bad_request", (path, limit, r.body)
        assert call(gw, "GET", f"{path}?limit=5", "bob").status == 200
    # Every error answer has a reason, aiohttp's own refusals and the Host guard included.
    for method, path, headers, status, reason in (
        ("GET", "/api/v1/nope", {}, 404, "not_found"),
        ("DELETE", "/api/v1/environments", {}, 405, "method_not_allowed"),
        ("GET", "/api/v1/explain", {}, 400, "bad_request"),
        ("GET", "/api/v1/explain?host=x&listener=nope", {}, 404, "unknown_listener"),
        ("GET", "/api/v1/environments", {"Host": "evil.test"}, 421, "misdirected"),
    ):
        r = call(gw, method, path, "bob", headers=headers)
        assert (r.status, r.body["reason"]) == (status, reason), (path, r.body)
