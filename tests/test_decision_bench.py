"""Microbenchmarks of one decision with 10 and 1,000,000 entries (pytest-benchmark).

Run with ``make bench-micro`` (``--benchmark-enable``); in ``make test`` each runs once as a
correctness check. No timing assertions: these machines are shared and noisy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import load_bytes
from gateway.counters import Counters
from gateway.policy import ListenerPolicy, compile_config


def listener(n: int) -> ListenerPolicy:
    endpoints = [f"h{i}.example.com" for i in range(n - 3)]
    endpoints += ["www.acme.com", "acme.com:8443", "*.shop.acme.com"]
    cfg = {
        "environments": [
            {
                "name": "production",
                "hostname": "acme-prod.example.net",
                "secure_endpoints": endpoints,
                "upstreams": ["http://127.0.0.1:9"],
            }
        ]
    }
    return compile_config(load_bytes(json.dumps(cfg).encode()), Counters()).listeners["default"]


@pytest.fixture(scope="module", params=[10, 1_000_000], ids=["10", "1M"])
def lp(request: pytest.FixtureRequest) -> ListenerPolicy:
    return listener(request.param)


CASES = {
    "as_written": ("www.acme.com", "endpoint"),
    "as_written_port": ("acme.com:8443", "endpoint"),
    "other_case": ("WWW.Acme.com.", "endpoint"),
    "other_port": ("www.acme.com:8080", "endpoint"),
    "wildcard": ("a.b.shop.acme.com", "wildcard"),
    "unknown": ("evil.example.org", "unknown_host"),
    "malformed": ("evil..org", "malformed_host"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decide(benchmark: Any, lp: ListenerPolicy, case: str) -> None:
    """What a request costs: values a client repeats hit the fast map or the small cache
    of recent spellings."""
    value, label = CASES[case]
    decide: Callable[..., Any] = lp.decide
    hosts = [value]
    decision, _ = benchmark(decide, hosts, "GET", "/")
    assert decision.label == label


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("as_written")])
def test_decide_uncached(benchmark: Any, lp: ListenerPolicy, case: str) -> None:
    """The first sight of a spelling: full validation and lookup, no cache."""
    value, label = CASES[case]
    decision, _ = benchmark(lp._decide_value, value)
    assert decision.label == label
