"""Config validation: every error names its JSON path; nothing is half-applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from vectors_util import config_for

from gateway.config import ConfigError, load_bytes


def errors_of(cfg: Any) -> list[str]:
    raw = cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode()
    with pytest.raises(ConfigError) as info:
        load_bytes(raw)
    return info.value.errors


def base() -> dict[str, Any]:
    return config_for("single")


def test_valid_config_loads() -> None:
    loaded = load_bytes(json.dumps(base()).encode())
    assert [e.text for e in loaded.entries["production"]][:2] == ["www.acme.com", "acme.com:8443"]
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["environments"][0]["secure_endpoints"].append("*"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0]["secure_endpoints"].insert(3, "http://a.com"), "environments[0].secure_endpoints[3]"),
        (lambda c: c["environments"][0]["secure_endpoints"].append("0.0.0.0"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0]["secure_endpoints"].append("*.com"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0]["secure_endpoints"].append("*.a.com:80"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0]["secure_endpoints"].append("user@a.com"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0]["secure_endpoints"].append("a b.com"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0]["secure_endpoints"].append("xn--zz.com"), "environments[0].secure_endpoints[8]"),
        (lambda c: c["environments"][0].__setitem__("hostnme", "x"), "environments[0]: Object contains unknown field hostnme"),
        (lambda c: c.__setitem__("typo", 1), "unknown field typo"),
        (lambda c: c["environments"][0].__setitem__("enforcement", "maybe"), "environments[0].enforcement"),
        (lambda c: c["environments"][0].__setitem__("name", "Bad Name"), "environments[0].name"),
        (lambda c: c["environments"].append(dict(c["environments"][0])), "environments[1].name: duplicate"),
        (lambda c: c["environments"][0].__setitem__("upstreams", ["ftp://x"]), "environments[0].upstreams[0]"),
        (lambda c: c["environments"][0].__setitem__("upstreams", []), "environments[0].upstreams"),
        (lambda c: c["environments"][0].pop("hostname"), "missing required field hostname"),
        (lambda c: c["environments"][0].__setitem__("secure_endpoints", "a.com"), "environments[0].secure_endpoints: Expected array"),
        (lambda c: c.__setitem__("blocked_response", {"status": 500}), "blocked_response.status"),
        (lambda c: c.__setitem__("trusted_proxies", ["10.0.0.0/33"]), "trusted_proxies[0]"),
        (lambda c: c.__setitem__("listeners", [{"name": "a", "bind": "nope", "environments": ["production"]}]), "listeners[0].bind"),
        (lambda c: c.__setitem__("listeners", [{"name": "a", "bind": "127.0.0.1:1", "environments": ["nope"]}]), "listeners[0].environments[0]"),
        (lambda c: c.__setitem__("listeners", [{"name": "a", "bind": "127.0.0.1:1", "environments": ["production"], "default_environment": "x"}]), "listeners[0].default_environment"),
    ],
)  # fmt: skip
def test_errors_name_their_path(mutate: Any, expected: str) -> None:
    cfg = base()
    mutate(cfg)
    errs = errors_of(cfg)
    assert any(expected in e for e in errs), errs


def test_same_entry_in_two_environments_of_one_listener_is_an_error() -> None:
    cfg = config_for("shared")
    cfg["environments"][1]["secure_endpoints"].append("shop.acme.com:8443")
    assert any("claimed by both" in e for e in errors_of(cfg))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"[]",
        b"\xff\xfe{}",
        b'{"environments": "x"}',
        b"null",
        b'{"environments": []}',
    ],
)
def test_unusable_files(raw: bytes) -> None:
    assert errors_of(raw)


def test_all_errors_are_reported_at_once() -> None:
    cfg = base()
    cfg["environments"][0]["secure_endpoints"] += ["*", "a..b"]
    cfg["environments"][0]["upstreams"] = ["nope"]
    errs = errors_of(cfg)
    assert len(errs) >= 3


def test_normalisation_notes_for_lint() -> None:
    cfg = base()
    cfg["environments"][0]["secure_endpoints"] = ["WWW.Acme.com.", "bücher.example", "www.acme.com"]
    loaded = load_bytes(json.dumps(cfg).encode())
    assert [e.text for e in loaded.entries["production"]] == [
        "www.acme.com",
        "xn--bcher-kva.example",
    ]
    notes = " ".join(loaded.notes)
    assert "secure_endpoints[0]" in notes and "secure_endpoints[2]" in notes
