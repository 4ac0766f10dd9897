"""Hypothesis properties of the decision core (sans-IO, plain function calls)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import hosts
from gateway.config import load_bytes
from gateway.counters import Counters
from gateway.policy import compile_config

ENTRIES = ["www.acme.com", "acme.com:8443", "*.shop.acme.com", "12.34.56.78", "[2001:db8::1]"]
HOSTNAME = "acme-prod.example.net"
SNAP = compile_config(
    load_bytes(
        json.dumps(
            {
                "environments": [
                    {
                        "name": "production",
                        "hostname": HOSTNAME,
                        "secure_endpoints": ENTRIES,
                        "upstreams": ["http://127.0.0.1:9"],
                    }
                ]
            }
        ).encode()
    ),
    Counters(),
)
LP = SNAP.listeners["default"]

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
name_like = st.one_of(
    st.builds(lambda ls: ".".join(ls), st.lists(label, min_size=1, max_size=5)),
    st.sampled_from(
        ["www.acme.com", "acme.com", "shop.acme.com", "x.shop.acme.com", "a.b.shop.acme.com",
         HOSTNAME, "12.34.56.78", "[2001:db8::1]", "[2001:DB8::1]", "xshop.acme.com"]
    ),
    st.builds(lambda a, b: f"{a}.shop.acme.com", label, label),
)  # fmt: skip
port = st.one_of(st.none(), st.integers(min_value=0, max_value=70000))
host_value = st.builds(lambda n, p: n if p is None else f"{n}:{p}", name_like, port)
anything = st.one_of(
    st.text(max_size=80), host_value, st.binary(max_size=80).map(lambda b: b.decode("latin-1"))
)


def allowed_by_definition(value: str) -> bool:
    """The rule, written plainly from the contract, independent of the compiled maps."""
    try:
        a = hosts.parse_host(value)
    except hosts.MalformedHost:
        return False
    effective_port = a.port if a.port is not None else 80
    if a.host == HOSTNAME:
        return True
    for text in ENTRIES:
        e = hosts.parse_entry(text)
        if e.kind == "wildcard":
            if a.kind == "name" and a.host.endswith("." + e.host):
                return True
        elif e.host == a.host and (e.port is None or e.port == effective_port):
            return True
    return False


@settings(max_examples=1500, deadline=None)
@given(anything)
def test_no_input_raises(value: str) -> None:
    for hs in ([value], [value, value], []):
        decision, _ = LP.decide(hs, "GET", "/")
        assert decision.action in ("forward", "refuse")
    LP.explain(value)


@settings(max_examples=1500, deadline=None)
@given(host_value)
def test_allowed_exactly_when_the_rule_says_so(value: str) -> None:
    decision, _ = LP.decide([value])
    assert (decision.action == "forward") == allowed_by_definition(value)


@settings(max_examples=1000, deadline=None)
@given(name_like, port)
def test_case_and_one_trailing_dot_never_change_a_decision(name: str, p: int | None) -> None:
    suffix = "" if p is None else f":{p}"
    base, _ = LP.decide([name + suffix])
    for variant in (name.upper() + suffix, name.title() + suffix, name + "." + suffix):
        other, _ = LP.decide([variant])
        if name.endswith("]") and variant.startswith(name + "."):
            continue  # a dot after an IPv6 literal is not a trailing dot of a name
        if variant == name + "." + suffix and hosts_kind(name) == "ipv4":
            continue  # "1.2.3.4." is malformed by the contract: not a name
        assert other is base, (name, variant)


def hosts_kind(name: str) -> str:
    try:
        return hosts.parse_host(name).kind
    except hosts.MalformedHost:
        return "bad"


@settings(max_examples=500, deadline=None)
@given(anything)
def test_fast_path_never_disagrees(value: str) -> None:
    assert LP.decide_host(value) == LP._decide_value(value)
