"""The decision core against the shared vectors, plus its structural guarantees."""

from __future__ import annotations

import json
from typing import Any

import pytest
from vectors_util import CASES, case_id, config_for

from gateway.config import load_bytes
from gateway.counters import Counters
from gateway.policy import ALLOWED, BLOCKED, Snapshot, compile_config


def snapshot(name: str) -> Snapshot:
    return compile_config(load_bytes(json.dumps(config_for(name)).encode()), Counters())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector(case: dict[str, Any]) -> None:
    snap = snapshot(case["config"])
    lp = next(iter(snap.listeners.values()))
    hosts = case["hosts"] if "hosts" in case else [case["host"]]
    decision, forward = lp.decide(hosts, case.get("method", "GET"), case.get("target", "/"))
    want = case["expect"]
    assert decision.action == want["action"], case["note"]
    assert decision.environment == want["environment"], case["note"]
    assert decision.label == want["label"], case["note"]
    if want["action"] == "refuse":
        assert decision.status == want["status"]
    if "upstream_host" in want:
        assert forward == want["upstream_host"]


@pytest.mark.parametrize("name", ["single", "shared", "nodefault"])
def test_fast_path_agrees_with_slow_path(name: str) -> None:
    snap = snapshot(name)
    lp = next(iter(snap.listeners.values()))
    assert lp.fast, "canonical entries are on the fast path"
    for key, decision in lp.fast.items():
        assert lp._decide_value(key) == (decision, key)


def test_decisions_are_shared_and_counted_in_fixed_slots() -> None:
    counters = Counters()
    snap = compile_config(load_bytes(json.dumps(config_for("single")).encode()), counters)
    lp = snap.listeners["default"]
    a, _ = lp.decide(["www.acme.com"])
    b, _ = lp.decide(["Www.Acme.Com."])
    assert a is b  # prebuilt, not allocated per request
    assert counters.keys[a.slot] == (ALLOWED, ("default", "production", "endpoint"))
    refused, _ = lp.decide(["evil.example"])
    assert counters.keys[refused.slot] == (BLOCKED, ("default", "production", "unknown_host"))


def test_recompile_reuses_counter_slots() -> None:
    counters = Counters()
    raw = json.dumps(config_for("single")).encode()
    s1 = compile_config(load_bytes(raw), counters)
    n = len(counters.values)
    s2 = compile_config(load_bytes(raw), counters)
    assert len(counters.values) == n
    d1, _ = s1.listeners["default"].decide(["www.acme.com"])
    d2, _ = s2.listeners["default"].decide(["www.acme.com"])
    assert d1.slot == d2.slot


def test_candidate_disagreements() -> None:
    cfg = config_for("single")
    cfg["environments"][0]["secure_endpoints"] = ["www.acme.com", "old.acme.com"]
    cfg["environments"][0]["candidate_endpoints"] = ["www.acme.com", "new.acme.com"]
    snap = compile_config(load_bytes(json.dumps(cfg).encode()), Counters())
    lp = snap.listeners["default"]
    assert lp.decide(["www.acme.com"])[0].disagreement == ""
    old, _ = lp.decide(["old.acme.com"])
    assert (old.action, old.disagreement) == ("forward", "newly_blocked")
    new, _ = lp.decide(["new.acme.com"])
    assert (new.action, new.disagreement) == ("refuse", "newly_allowed")
    assert lp.decide(["acme-prod.example.net"])[0].disagreement == ""  # hostname in both
    assert lp.decide(["other.example"])[0].disagreement == ""  # refused by both


def test_large_list_lookup_is_by_hash() -> None:
    cfg = config_for("single")
    cfg["environments"][0]["secure_endpoints"] = [f"h{i}.example.com" for i in range(20000)]
    snap = compile_config(load_bytes(json.dumps(cfg).encode()), Counters())
    lp = snap.listeners["default"]
    assert lp.decide(["h19999.example.com"])[0].label == "endpoint"
    assert lp.decide(["H19999.example.com."])[0].label == "endpoint"
    assert lp.decide(["h20000.example.com"])[0].label == "unknown_host"


def test_recent_spellings_cache_is_bounded_and_agrees() -> None:
    from gateway.policy import RECENT_MAX_KEY, RECENT_SIZE

    lp = snapshot("single").listeners["default"]
    for i in range(RECENT_SIZE * 3):
        lp.decide([f"h{i}.Example.com"])
        assert len(lp._recent) <= RECENT_SIZE
    long_value = "a" * (RECENT_MAX_KEY + 1)
    lp.decide([long_value])
    assert long_value not in lp._recent
    for value in ("WWW.acme.com", "www.acme.com:8080", "evil.example", "a..b"):
        first = lp.decide([value])
        assert lp.decide([value]) == first == lp._decide_value(value)


def test_reload_reuses_unchanged_environments_and_validates_changed_ones() -> None:
    from gateway.config import ConfigError

    cfg = config_for("shared")
    counters = Counters()
    old = compile_config(load_bytes(json.dumps(cfg).encode()), counters)
    cfg["environments"][1]["secure_endpoints"].append("more.acme.com")
    loaded = load_bytes(json.dumps(cfg).encode(), previous=old.loaded)
    assert loaded.entries == load_bytes(json.dumps(cfg).encode()).entries  # same as from scratch
    new = compile_config(loaded, counters, previous=old)
    assert new.envs["prod"] is old.envs["prod"]  # untouched: compiled sets kept
    assert new.envs["stage"] is not old.envs["stage"]
    assert new.listeners["public"].decide(["more.acme.com"])[0].environment == "stage"
    for bad in ("*", "WWW.acme.com", "shop.acme.com"):  # an error, a note, a duplicate
        cfg["environments"][1]["secure_endpoints"].append(bad)
        raw = json.dumps(cfg).encode()
        if bad == "*":
            with pytest.raises(ConfigError):
                load_bytes(raw, previous=old.loaded)
        else:
            scratch = load_bytes(raw)
            assert load_bytes(raw, previous=old.loaded).entries == scratch.entries
            assert scratch.notes
        cfg["environments"][1]["secure_endpoints"].pop()
    cfg["blocked_response"] = {"status": 421}  # an inherited default changes every env
    newer = compile_config(
        load_bytes(json.dumps(cfg).encode(), previous=new.loaded), counters, previous=new
    )
    assert newer.envs["prod"] is not new.envs["prod"] and newer.envs["prod"].blocked.status == 421
