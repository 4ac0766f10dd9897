"""Reloads cut into steps (gateway/steps.py): the same results as loading at once, bounded
pieces of work, the loop given back between them, and plain entries kept as texts."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import hosts
from gateway.config import ENTRY_CHUNK, load_bytes, load_steps
from gateway.counters import Counters
from gateway.policy import compile_config, compile_steps
from gateway.reload import SliceStats, diff_snapshots, drive_on_loop
from gateway.steps import Steps, drive


def config(lists: dict[str, list[str]]) -> bytes:
    envs = [
        {
            "name": name,
            "hostname": f"{name}.internal.example",
            "secure_endpoints": entries,
            "upstreams": ["http://127.0.0.1:9"],
        }
        for name, entries in lists.items()
    ]
    return json.dumps({"environments": envs}).encode()


# -- plain entries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, plain",
    [
        ("www.example.com", True),
        ("example.com:8443", True),
        ("a:1", True),
        ("a:65535", True),
        ("a:65536", False),
        ("a:0", False),
        ("a:08080", False),  # a leading zero is normalised by the full parser
        ("_acme-challenge.example.com", True),
        ("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 61, True),  # 253
        ("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 62, False),  # 254
        ("x" * 64 + ".com", False),
        ("10.0.0.1", False),  # the last label is numeric: an IPv4 literal
        ("host.0x1f", False),
        ("xn--bcher-kva.example", False),  # A-labels are checked by idna
        ("WWW.example.com", False),
        ("www.example.com.", False),
        ("*.example.com", False),
        ("-a.example.com", False),
        ("a-.example.com", False),
        ("a..b", False),
        ("[::1]:8080", False),
        ("a:1:2", False),
    ],
)
def test_plain_entry_regex(value: str, plain: bool) -> None:
    assert (hosts.PLAIN_ENTRY_RE.fullmatch(value) is not None) is plain


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="abcxyz019-_.:*Aq", min_size=1, max_size=40))
def test_a_plain_entry_parses_as_the_full_parser_does(value: str) -> None:
    """A value the regex accepts is its own canonical text; its upper-case spelling (never
    plain) goes through the full parser and must come out the same."""
    if hosts.PLAIN_ENTRY_RE.fullmatch(value) is None:
        return
    entry = hosts.parse_entry(value)
    assert entry == hosts.plain_entry(value)
    assert entry.kind == "name" and entry.text == value and not entry.notes
    slow = hosts.parse_entry(value.upper())
    assert (slow.kind, slow.host, slow.port, slow.text) == (
        entry.kind,
        entry.host,
        entry.port,
        entry.text,
    )


def test_entry_list_keeps_texts_and_builds_entries_on_access() -> None:
    parsed = [
        hosts.parse_entry(v)
        for v in ("www.example.com", "*.example.org", "10.0.0.1", "api.example.com:8443")
    ]
    entries = hosts.EntryList.of(parsed)
    assert list(entries) == parsed and entries == tuple(parsed)
    assert entries.texts == ("www.example.com", "*.example.org", "10.0.0.1", "api.example.com:8443")
    assert set(entries.special) == {"*.example.org", "10.0.0.1"}  # the rest is plain text
    assert entries[3] == parsed[3] and entries[-3] == parsed[1]
    assert list(entries[1:3]) == parsed[1:3]
    names, ported, special = entries.split()
    assert names == ["www.example.com"] and ported == ["api.example.com:8443"]
    assert sorted(e.text for e in special) == ["*.example.org", "10.0.0.1"]
    assert entries != hosts.EntryList.of(parsed[:3])


def test_a_large_list_holds_no_entry_objects() -> None:
    values = [f"h{i}.example.com" for i in range(10_000)]
    loaded = load_bytes(config({"big": [*values, "*.wild.example", "WWW.Example.com"]}))
    entries = loaded.entries["big"]
    assert len(entries) == 10_002
    assert set(entries.special) == {"*.wild.example"}  # normalised names are plain after
    assert entries[-1] == hosts.Entry("name", "www.example.com", None, "www.example.com")
    assert any("normalised from 'WWW.Example.com'" in n for n in loaded.notes)


# -- steps -----------------------------------------------------------------------------------


def mixed_lists(n: int) -> dict[str, list[str]]:
    return {
        "a": [f"h{i}.a.example.com" for i in range(n)]
        + ["*.wild.a.example", "10.1.2.3", "[2001:db8::1]:8443", "x.a.example:8080"],
        "b": [f"h{i}.b.example.com" for i in range(n)]
        + ["Upper.B.example", "h1.b.example.com", "münchen.example"],
    }


def test_load_and_compile_in_steps_equal_loading_at_once() -> None:
    raw = config(mixed_lists(5_000))
    at_once = load_bytes(raw)
    steps = load_steps(raw)
    count = 0
    while True:
        try:
            next(steps)
            count += 1
        except StopIteration as stop:
            stepped = stop.value
            break
    # Bounded pieces: at least one step per ENTRY_CHUNK entries of each list.
    assert count >= 2 * 5_000 // ENTRY_CHUNK
    assert stepped.entries == at_once.entries and stepped.notes == at_once.notes
    assert stepped.entry_texts == at_once.entry_texts and stepped.sha256 == at_once.sha256
    counters = Counters()
    a = compile_config(at_once, counters)
    b = drive(compile_steps(stepped, counters))
    la, lb = a.listeners["default"], b.listeners["default"]
    assert la.fast.keys() == lb.fast.keys()
    for env in ("a", "b"):
        assert (a.envs[env].exact, a.envs[env].ported, a.envs[env].wildcards) == (
            b.envs[env].exact,
            b.envs[env].ported,
            b.envs[env].wildcards,
        )
    expected = {
        "h7.a.example.com": ("forward", "a", "endpoint"),
        "H4999.A.example.com": ("forward", "a", "endpoint"),
        "deep.wild.a.example": ("forward", "a", "wildcard"),
        "10.1.2.3": ("forward", "a", "endpoint"),
        "[2001:db8::1]:8443": ("forward", "a", "endpoint"),
        "upper.b.example": ("forward", "b", "endpoint"),
        "xn--mnchen-3ya.example": ("forward", "b", "endpoint"),
        "x.a.example:8080": ("forward", "a", "endpoint"),
        "b.internal.example": ("forward", "b", "hostname"),
        "x.a.example": ("refuse", "", "no_route"),
        "[2001:db8::1]": ("refuse", "", "no_route"),
        "h5000.a.example.com": ("refuse", "", "no_route"),
    }
    for host, want in expected.items():
        for lp in (la, lb):
            d = lp.decide([host])[0]
            assert (d.action, d.environment, d.label) == want, host


def test_a_reload_from_the_previous_config_equals_a_load_from_scratch() -> None:
    lists = mixed_lists(3_000)
    old = load_bytes(config(lists))
    lists["a"][10:15] = [f"new{i}.a.example.com" for i in range(5)]
    lists["b"].append("*.b.example")
    raw = config(lists)
    again = load_bytes(raw, previous=old)
    scratch = load_bytes(raw)
    assert again.entries == scratch.entries and again.notes == scratch.notes
    assert again.entry_texts == scratch.entry_texts


def test_errors_in_a_large_list_name_their_paths() -> None:
    from gateway.config import ConfigError

    values = [f"h{i}.example.com" for i in range(4_000)]
    values[1234] = "bad host"
    values[3999] = "*"
    with pytest.raises(ConfigError) as err:
        load_bytes(config({"big": values}))
    text = "; ".join(err.value.errors)
    assert "environments[0].secure_endpoints[1234]" in text
    assert "environments[0].secure_endpoints[3999]" in text


def test_the_loop_runs_between_steps() -> None:
    raw = config(mixed_lists(20_000))

    async def main() -> tuple[int, SliceStats, object]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        stats = SliceStats()
        loaded = await drive_on_loop(load_steps(raw), stats, slice_s=0.0)
        done = True
        await task
        return ticks, stats, loaded

    ticks, stats, loaded = asyncio.run(main())
    assert stats.yields >= 2 * 20_000 // ENTRY_CHUNK and ticks >= stats.yields
    assert stats.longest_step_s > 0 and stats.longest_step_at
    assert loaded == load_bytes(raw)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_what_a_long_step_kept_waiting_runs_before_the_next_step(loop: str) -> None:
    """A timer that fell due during a long step wakes its task behind the reload's own:
    with one turn of the loop the next step would run first and the two steps' times
    would add up for that task (a request's handler, the stall monitor)."""
    import time

    order: list[str] = []

    def steps() -> Steps[None]:
        order.append("long step")
        end = time.perf_counter() + 0.02  # a timer falls due meanwhile
        while time.perf_counter() < end:
            pass
        yield
        order.append("next step")

    async def main() -> None:
        async def waiter() -> None:
            await asyncio.sleep(0.005)
            order.append("timer's task")

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # the waiter has started its sleep
        await drive_on_loop(steps(), slice_s=0.001)
        await task

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    assert order == ["long step", "timer's task", "next step"]


@pytest.mark.parametrize("at_once", [20_000, 0])
def test_diff_of_whole_lists_counts_and_samples(
    at_once: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.reload

    monkeypatch.setattr(gateway.reload, "DIFF_AT_ONCE", at_once)
    counters = Counters()
    old = compile_config(
        load_bytes(config({"a": [f"h{i}.old.example" for i in range(5_000)]})), counters
    )
    lists = {"a": [f"h{i}.new.example" for i in range(4_990)] + ["h1.old.example"]}
    new = compile_config(load_bytes(config(lists)), counters, previous=old)
    lines = diff_snapshots(old, new)
    added = next(line for line in lines if ": added " in line)
    removed = next(line for line in lines if ": removed " in line)
    assert added.endswith("and 4970 more") and added.count(".new.example") == 20
    assert removed.endswith("and 4979 more") and "h1.old.example" not in removed
    small = compile_config(
        load_bytes(config({"a": [*lists["a"], "z.new.example"]})), counters, previous=new
    )
    assert diff_snapshots(new, small) == ["environment a: added z.new.example"]
