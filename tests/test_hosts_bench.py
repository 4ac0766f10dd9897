"""Microbenchmarks of gateway.hosts on the request hot path.

No timing assertions (shared machines drift by 30 %); run with `--benchmark-enable` to
see figures. With the suite's default `--benchmark-disable` each runs once as a test.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from gateway.hosts import (
    Authority,
    MalformedHost,
    _ipv6_canonical,
    parse_entry,
    parse_host,
    wildcard_candidates,
)

# Each round runs enough calls to last 0.2 ms, so the timer's own cost (~1 us on these
# machines) is spread over many calls instead of inflating a 2 us figure.
HOT_PATH = pytest.mark.benchmark(group="parse_host", min_time=0.0002, max_time=0.5, warmup=True)

HOT = [
    ("www.acme.com", Authority("www.acme.com", None, "name")),
    ("acme.com:8443", Authority("acme.com", 8443, "name")),
    ("[2001:db8::1]:443", Authority("[2001:db8::1]", 443, "ipv6")),
    ("WWW.Acme.COM.", Authority("www.acme.com", None, "name")),
]


@HOT_PATH
@pytest.mark.parametrize(("value", "expected"), HOT, ids=[v for v, _ in HOT])
def test_bench_parse_host(benchmark: BenchmarkFixture, value: str, expected: Authority) -> None:
    assert benchmark(parse_host, value) == expected


@HOT_PATH
def test_bench_parse_host_bytes(benchmark: BenchmarkFixture) -> None:
    # aiohttp's raw headers are bytes; the decode is part of the cost.
    assert benchmark(parse_host, b"www.acme.com") == Authority("www.acme.com", None, "name")


@HOT_PATH
def test_bench_ipv6_uncached(benchmark: BenchmarkFixture) -> None:
    # The cost of a literal the bounded cache has not seen (e.g. an attacker cycling them).
    assert benchmark(_ipv6_canonical.__wrapped__, "2001:DB8:0:0:0:0:0:1") == "2001:db8::1"


@HOT_PATH
def test_bench_malformed(benchmark: BenchmarkFixture) -> None:
    # Refusals are what a scanner sends; the error path (message built) must stay cheap too.
    def refuse() -> str:
        try:
            parse_host("good.com@evil.com")
        except MalformedHost as exc:
            return exc.reason
        return "accepted"

    assert benchmark(refuse) == "malformed_host"


@pytest.mark.benchmark(group="lookup", min_time=0.0002, max_time=0.5, warmup=True)
def test_bench_wildcard_candidates(benchmark: BenchmarkFixture) -> None:
    assert benchmark(wildcard_candidates, "a.b.shop.acme.com")[1] == "shop.acme.com"


@pytest.mark.benchmark(group="config")
def test_bench_parse_entry_idn(benchmark: BenchmarkFixture) -> None:
    # Config-time only; shows why idna runs only on non-ASCII entries.
    assert benchmark(parse_entry, "bücher.de").host == "xn--bcher-kva.de"
