"""Keeps the Locust suite (bench/locustfile.py, `make bench-locust`) from rotting.

The smoke run: a real gateway and upstream, Locust in its own process for ~10 s, both
operators changing the allowlist every 1-2 s; it must check responses, find no wrong
decision, see the changes happen, and leave no process behind. No timing assertions.

The checker itself is tested first: a suite that cannot flag a wrong decision would pass
every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support import group_alive, run_bench_module

REPO = Path(__file__).resolve().parent.parent
# bench/ is not an installed package: importable from the repository root only, which
# `python -m pytest` puts on the path and a bare `pytest` does not.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.locust.allowlist import from_config, split_host  # noqa: E402
from bench.locust.checks import Observed, judge  # noqa: E402
from bench.locust.versions import VersionRegistry  # noqa: E402

MIN_CHANGES = 3  # per operator in 10 s at one change every 1-2 s

CONFIG = {
    "environments": [
        {
            "name": "production",
            "hostname": "acme-prod.example.net",
            "secure_endpoints": ["www.acme.com", "pay.acme.com:8443", "*.shop.acme.com",
                                 "[2001:db8::1]"],
        },
        {"name": "internal", "hostname": "tools.internal.example", "secure_endpoints": []},
    ]
}  # fmt: skip


def _upstream_body(host: str) -> bytes:
    return json.dumps({"upstream": "up", "headers": [["Host", host]]}).encode()


def _obs(host: str, status: int, body: bytes = b"", malformed: bool = False) -> Observed:
    return Observed("t", host, malformed, status, "abc", body)


REFUSED = b"Host header does not match\nRequest ID: 1\n"


@pytest.mark.parametrize(
    ("obs", "kind"),
    [
        (_obs("WWW.Acme.com.", 200, _upstream_body("www.acme.com")), "ok"),
        (_obs("www.acme.com:8080", 200, _upstream_body("www.acme.com:8080")), "ok"),
        (_obs("pay.acme.com:8443", 200, _upstream_body("pay.acme.com:8443")), "ok"),
        (_obs("a.b.shop.acme.com", 200, _upstream_body("a.b.shop.acme.com")), "ok"),
        (_obs("[2001:DB8:0::1]", 200, _upstream_body("[2001:db8::1]")), "ok"),
        (_obs("tools.internal.example", 200, _upstream_body("tools.internal.example")), "ok"),
        (_obs("shop.acme.com", 503, REFUSED), "ok"),  # the wildcard's apex
        (_obs("pay.acme.com", 503, REFUSED), "ok"),  # port 80, entry is :8443
        (_obs("a b", 400, malformed=True), "ok"),
        # wrong decisions
        (_obs("shop.acme.com", 200, _upstream_body("shop.acme.com")), "wrong_decision"),
        (_obs("evil.example", 502), "wrong_decision"),  # tried to forward
        (_obs("www.acme.com", 503, REFUSED), "wrong_decision"),
        (_obs("good.com@evil.com", 503, REFUSED, malformed=True), "wrong_decision"),
        # right decision, wrong Host upstream; right decision, upstream failed
        (_obs("WWW.acme.com", 200, _upstream_body("WWW.acme.com")), "wrong_forward"),
        (_obs("www.acme.com", 502), "upstream_error"),
    ],
)
def test_checker_judges_responses(obs: Observed, kind: str) -> None:
    assert judge(obs, from_config(CONFIG)).kind == kind


def test_registry_judges_late_when_the_version_arrives() -> None:
    reg = VersionRegistry()
    late: list[str] = []
    reg.on_deferred = lambda obs, verdict: late.append(verdict.message)
    reg.register("1" * 64, from_config(CONFIG))
    removed = json.loads(json.dumps(CONFIG))
    removed["environments"][0]["secure_endpoints"].remove("www.acme.com")
    # A response from a version not known yet waits for it...
    obs = Observed("t", "www.acme.com", False, 200, "2" * 12, _upstream_body("www.acme.com"))
    assert reg.check(obs) is None
    # ... and is then found wrong: that version had removed the host.
    reg.register("2" * 64, from_config(removed))
    assert late and late[0].startswith("wrong decision")
    assert reg.tally.wrong_decisions == 1 and reg.tally.deferred == 1
    assert split_host("Pay.Acme.com.:8443").forwarded == "pay.acme.com:8443"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_locust_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    code, output = run_bench_module("bench.locust_run", ["--smoke", "--out", str(out)], 180)
    assert code == 0, output
    doc: dict[str, Any] = json.loads((out / "locust-latest.json").read_text())
    result = doc["scenarios"]["standard"]
    checks = result["checks"]
    assert checks["locust"]["requests"] > 0, output
    assert checks["checks"] > 0
    assert checks["wrong_decisions"] == 0, checks["examples"]
    assert checks["wrong_forwards"] == 0, checks["examples"]
    assert checks["no_version_header"] == 0
    # Every kind of decision was exercised.
    for expect in ("forward", "refuse", "malformed"):
        assert checks["by_expectation"].get(expect, 0) > 0, checks["by_expectation"]
    ops = checks["operators"]
    assert ops.get("file_changes", 0) >= MIN_CHANGES, ops
    assert ops.get("api_changes", 0) >= MIN_CHANGES, ops
    assert checks["versions_seen"] > MIN_CHANGES, "the changes never served a request"
    assert result["gateway_reloads"]["failure"] == 0
    assert (out / "locust-standard_stats.csv").exists()
    leftovers = [pid for pid in result["pids"] if group_alive(pid)]
    assert not leftovers, f"process groups still alive: {leftovers}"
