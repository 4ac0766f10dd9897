"""Space-Saving top blocked hosts: bounded, heavy hitters always present, values kept raw."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.topk import MAX_VALUE_CHARS, BlockedHosts, TopK, merge_snapshots


def test_heavy_hitters_survive_a_flood_of_random_values() -> None:
    rng = random.Random(1)
    tk = TopK(200)
    heavy = {f"heavy{i}.example": 2000 - 100 * i for i in range(5)}
    stream = [h for h, n in heavy.items() for _ in range(n)]
    stream += [f"rnd{rng.getrandbits(64):x}.example" for _ in range(100_000)]
    rng.shuffle(stream)
    for t, value in enumerate(stream):
        tk.add(value, "unknown_host", float(t))
    assert len(tk.slots) == 200  # N/k = 540: every heavy value is guaranteed a slot
    top = tk.top(5)
    assert [s.value for s in top] == list(heavy)
    for s in top:  # Space-Saving: count - error <= true count <= count
        assert s.count - s.error <= heavy[s.value] <= s.count


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([f"h{i}" for i in range(30)]), max_size=400), st.integers(1, 20))
def test_space_saving_bounds(values: list[str], k: int) -> None:
    tk = TopK(k)
    for t, v in enumerate(values):
        tk.add(v, "unknown_host", float(t))
    assert len(tk.slots) <= k
    assert sum(s.count for s in tk.slots.values()) == len(values)
    n = len(values)
    for v in set(values):
        true = values.count(v)
        if true > n / k:
            assert v in tk.slots  # the guarantee that makes the list trustworthy
        if v in tk.slots:
            s = tk.slots[v]
            assert s.count - s.error <= true <= s.count


def test_long_values_are_flagged_and_hostile_values_kept_verbatim() -> None:
    bh = BlockedHosts(10)
    hostile = "<img src=x onerror=alert(1)>.evil"
    bh.add("prod", hostile, "malformed_host", 1.0)
    bh.add("prod", "a" * 1000, "malformed_host", 2.0)
    rows = {r["host"]: r for r in bh.snapshot()["prod"]}
    assert rows[hostile]["truncated"] is False
    long_row = next(r for r in rows.values() if r["truncated"])
    assert len(str(long_row["host"])) == MAX_VALUE_CHARS


def test_merge_adds_counts_across_workers() -> None:
    a, b = BlockedHosts(), BlockedHosts()
    for _ in range(3):
        a.add("prod", "x.example", "unknown_host", 1.0)
    b.add("prod", "x.example", "unknown_host", 5.0)
    b.add("prod", "y.example", "unknown_host", 0.5)
    merged = merge_snapshots([a.snapshot(), b.snapshot()])
    rows = merged["prod"]
    assert [(r["host"], r["count"]) for r in rows] == [("x.example", 4), ("y.example", 1)]
    assert rows[0]["first_seen"] == 1.0 and rows[0]["last_seen"] == 5.0


def _reference_space_saving(values: list[str], k: int) -> dict[str, tuple[int, int]]:
    """Space-Saving written plainly: the victim is the smallest (count, value), found by a
    scan. The heap in TopK must pick exactly the same victims."""
    table: dict[str, tuple[int, int]] = {}
    for v in values:
        if v in table:
            count, error = table[v]
            table[v] = (count + 1, error)
        elif len(table) < k:
            table[v] = (1, 0)
        else:
            victim = min(table, key=lambda key: (table[key][0], key))
            floor = table.pop(victim)[0]
            table[v] = (floor + 1, floor)
    return table


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([f"h{i:02d}" for i in range(40)]), max_size=600),
    st.integers(1, 25),
)
def test_topk_picks_the_same_victims_as_a_plain_scan(values: list[str], k: int) -> None:
    tk = TopK(k)
    for t, v in enumerate(values):
        tk.add(v, "unknown_host", float(t))
    got = {s.value: (s.count, s.error) for s in tk.slots.values()}
    assert got == _reference_space_saving(values, k)
    assert len(tk._heap) == len(tk.slots)  # one heap entry per slot, never more


# -- the runtime's batched fold (Runtime.note_blocked) ----------------------------------------


def _runtime(tmp_path: Any) -> Any:
    from gateway.config import load_file
    from gateway.runtime import Runtime

    cfg = tmp_path / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "environments": [
                    {
                        "name": "prod",
                        "hostname": "prod.example",
                        "secure_endpoints": ["www.prod.example"],
                        "upstreams": ["http://127.0.0.1:9"],
                    }
                ],
                "listeners": [
                    {
                        "name": "main",
                        "bind": "127.0.0.1:0",
                        "environments": ["prod"],
                        "default_environment": "prod",
                    }
                ],
            }
        )
    )
    return Runtime(load_file(str(cfg)))


def _refuse(rt: Any, values: list[str]) -> None:
    lp = rt.snapshot.listeners["main"]
    decision, _ = lp.decide(values, "GET", "/")
    assert decision.action == "refuse"
    rt.note_blocked(values, decision)


def test_weighted_adds_match_one_by_one_adds() -> None:
    rng = random.Random(7)
    values = [f"h{rng.randrange(40)}" for _ in range(3000)]
    one, batched = TopK(10), TopK(10)
    for v in values:
        one.add(v, "unknown_host", 1.0)
    for start in range(0, len(values), 100):  # the same stream folded in batches of 100
        counts: dict[str, int] = {}
        for v in values[start : start + 100]:
            counts[v] = counts.get(v, 0) + 1
        for v, n in counts.items():
            batched.add(v, "unknown_host", 1.0, n)
    assert sum(s.count for s in batched.slots.values()) == len(values)
    for s in batched.slots.values():  # still Space-Saving's bounds
        assert s.count - s.error <= values.count(s.value) <= s.count
    heavy = [v for v in set(values) if values.count(v) > len(values) / 10]
    assert all(v in batched.slots for v in heavy)


def test_refusals_are_held_then_folded_and_every_read_sees_them(tmp_path: Any) -> None:
    from gateway.runtime import FOLD_AT

    rt = _runtime(tmp_path)
    held = rt.blocked_pending  # the fast engine's listeners hold this map: never replaced
    for _ in range(3):
        _refuse(rt, ["evil.example"])
    # Bytes that are not UTF-8 (decoded with surrogateescape): counted as \xNN escapes.
    _refuse(rt, [b"bad\xff.example".decode("utf-8", "surrogateescape")])
    _refuse(rt, ["a.example", "b.example"])  # two Host fields: refused, not counted
    # Held per (decision, Host), not counted yet.
    assert sorted(n for n in rt.blocked_pending.values()) == [1, 3] and not rt.blocked.per_env
    before = time.time()
    rows = {r["host"]: r for r in rt.blocked_snapshot()["prod"]}
    assert not rt.blocked_pending
    assert rows["evil.example"]["count"] == 3
    assert rows["evil.example"]["reason"] == "unknown_host"
    assert float(rows["evil.example"]["last_seen"]) >= before - 0.01
    assert "bad\\xff.example" in rows
    assert len(rows) == 2
    # Bounded: a flood of one Host is one held pair whatever its length; FOLD_AT distinct
    # ones fold themselves, with no reader and no timer.
    for _ in range(FOLD_AT * 3 + 5):
        _refuse(rt, ["flood.example"])
    assert list(rt.blocked_pending.values()) == [FOLD_AT * 3 + 5]
    for i in range(FOLD_AT - 1):
        _refuse(rt, [f"h{i}.example"])
    assert not rt.blocked_pending  # the FOLD_AT-th distinct pair folded them all
    assert rt.blocked.per_env["prod"].slots["flood.example"].count == FOLD_AT * 3 + 5
    rt.clear_blocked("prod")  # a clear drops the held ones too
    assert rt.blocked_snapshot() == {}
    assert rt.blocked_pending is held


def test_a_host_refused_for_two_reasons_keeps_the_last(tmp_path: Any) -> None:
    """Held pairs are folded in the order of their last refusal, as one table add per
    refusal would leave the slot: with the reason the Host was last refused for."""
    rt = _runtime(tmp_path)
    lp = rt.snapshot.listeners["main"]
    unknown, _ = lp.decide(["x.example"], "GET", "/")
    other = lp.refusals["sni_mismatch"]
    for decision in (unknown, other, unknown):
        rt.note_blocked(["x.example"], decision)
    (row,) = rt.blocked_snapshot()["prod"]
    assert (row["count"], row["reason"]) == (3, "unknown_host")
    for decision in (other, unknown, other):
        rt.note_blocked(["x.example"], decision)
    (row,) = rt.blocked_snapshot()["prod"]
    assert (row["count"], row["reason"]) == (6, "sni_mismatch")


async def test_held_refusals_are_folded_on_a_timer(tmp_path: Any) -> None:
    from gateway.runtime import FOLD_S

    rt = _runtime(tmp_path)
    task = asyncio.get_running_loop().create_task(rt.fold_blocked_forever())
    try:
        _refuse(rt, ["late.example"])
        started = time.monotonic()
        while not rt.blocked.per_env and time.monotonic() - started < 15:
            await asyncio.sleep(0.01)
        took = time.monotonic() - started
        assert rt.blocked.per_env["prod"].slots["late.example"].count == 1
        print(f"folded after {took:.3f} s (FOLD_S = {FOLD_S})")
    finally:
        task.cancel()
