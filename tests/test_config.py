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


@pytest.mark.parametrize(
    ("splice", "key"),
    [
        # Inside an environment: the last "enforcement" would turn the check off.
        (lambda s: s.replace('"name": "production"', '"enforcement": "enforce", "enforcement": "off", "name": "production"', 1), "enforcement"),
        # Two top-level lists: the first one would be dropped without a word.
        (lambda s: s.replace("{", '{"environments": [], ', 1), "environments"),
        # The name itself (the message then cannot say which object holds it).
        (lambda s: s.replace('"name": "production"', '"name": "x", "name": "production"', 1), "name"),
    ],
)  # fmt: skip
def test_a_key_given_twice_is_an_error(splice: Any, key: str) -> None:
    """orjson and msgspec keep the last of two equal keys, other parsers the first: the
    reader of the file and the gateway would see two different configs."""
    raw = splice(json.dumps(base()))
    assert raw.count(f'"{key}"') >= 2
    errs = errors_of(raw.encode())
    assert errs == [errs[0]] and f"the key {key!r} appears twice" in errs[0], errs


def test_syntax_errors_say_what_is_wrong() -> None:
    assert errors_of(b"\xff\xfe{}")[0].startswith("not UTF-8 text (byte 0")
    assert errors_of(b'{"environments": [}')[0].startswith("not valid JSON: ")
    assert errors_of(b"   ") == ["file is empty"]


def test_tokens_file_errors_say_what_is_wrong() -> None:
    from gateway.tokens import TokensError, parse_tokens

    entry = b'{"name": "a", "role": "admin", "sha256": "' + b"0" * 64 + b'"}'
    for raw, why in (
        (b"{bad", "not valid JSON"),  # not msgspec's "Expected `array`, got `object`"
        (b"", "empty"),
        (b"\xff[]", "not UTF-8"),
        (b"[" + entry.replace(b'"role"', b'"role": "viewer", "role"') + b"]", "'role' appears twice"),
        (b"[" + entry.replace(b'"name": "a"', b'"name": "a\\n"') + b"]", "printable"),
    ):  # fmt: skip
        with pytest.raises(TokensError, match=why):
            parse_tokens(raw, "t.json")


def test_repeated_keys_are_found_around_long_lists() -> None:
    """The check skips the allowlists' texts (it would otherwise make 100,000 strings on
    the serving loop); a repeated key before, between or after them is still found, and
    so is a list given twice, the same or different."""
    from gateway import jsondoc

    def doc(env_extra: str = "", top_extra: str = "", lists: str = "") -> bytes:
        hosts = json.dumps([f"h{i}.example.com" for i in range(200)])
        env = (
            f'{{"name": "p", "hostname": "p.example.net", {env_extra}"secure_endpoints": {hosts}, '
            f'{lists}"upstreams": ["http://127.0.0.1:9"]}}'
        )
        return f'{{{top_extra}"environments": [{env}]}}'.encode()

    assert load_bytes(doc()).config.environments[0].name == "p"
    other = json.dumps(["x.example.com"] * 50)
    for raw, key in (
        (doc(env_extra='"name": "q", '), "name"),
        (doc(lists='"upstreams": [], '), "upstreams"),
        (doc(lists=f'"secure_endpoints": {other}, '), "secure_endpoints"),
        (doc(lists=f'"secure_endpoints": {json.dumps([f"h{i}.example.com" for i in range(200)])}, '),
         "secure_endpoints"),
        (doc(top_extra='"environments": [], '), "environments"),
    ):  # fmt: skip
        errs = errors_of(raw)
        assert f"the key {key!r} appears twice" in errs[0], (key, errs)
    # Texts that are not in the document, or short, are parsed in full, not trusted.
    with pytest.raises(jsondoc.JSONDocError):
        jsondoc.check_unique_keys(
            b'{"a": ["' + b"x" * 300 + b'"], "a": 1}', [b'["' + b"y" * 300 + b'"]']
        )
    with pytest.raises(jsondoc.JSONDocError):
        jsondoc.check_unique_keys(b'{"a": [], "b": {"c": 1, "c": 2}}', [b"[]"])
    # A text found where it is not the array (here it starts inside the string "[") would
    # leave a broken document: the check falls back to the file as written.
    long = b'"' + b"y" * 300 + b'"'
    raw = b'{"s": "[", "t": [' + long + b'], "u": 1}'
    jsondoc.check_unique_keys(raw, [b'[", "t": [' + long + b"]"])
    with pytest.raises(jsondoc.RepeatedKeyError):
        jsondoc.check_unique_keys(raw.replace(b'"u"', b'"s"'), [b'[", "t": [' + long + b"]"])
