"""The changes the admin API and the CLI can make to one environment, as mutations of its
JSON object (``store.ConfigStore.edit`` applies them under the lock).

Hosts are checked with ``hosts.parse_entry``, the code that checks the file, and written
in their canonical form (lowercase, A-labels, RFC 5952), so what the file says is what is
enforced and "already present" means the same entry, however it was spelled. The whole
document is validated again by ``config.load_bytes`` before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway import hosts
from gateway.store import Change, Mutation, StoreError

ENFORCEMENT_MODES = ("enforce", "report", "off")
# Where a key the file did not have goes: the order of config.Environment's fields.
_KEY_ORDER = (
    "name",
    "hostname",
    "secure_endpoints",
    "candidate_endpoints",
    "enforcement",
    "upstreams",
    "locked",
    "blocked_response",
    "limits",
    "timeouts",
)


def _invalid(message: str) -> StoreError:
    return StoreError(422, "invalid_host", message, errors=[message])


def _canonical(values: Sequence[str], where: str | None, start: int = 0) -> list[str]:
    """Canonical texts of the given entries, duplicates dropped, order kept (422 if bad).

    Errors name the place the entry would take in the file (``where[start + k]``), as the
    file's own validation does.
    """
    out: list[str] = []
    for k, value in enumerate(values):
        prefix = f"{where}[{start + k}]: " if where else ""
        if not isinstance(value, str):
            raise _invalid(f"{prefix}must be a string")
        try:
            text = hosts.parse_entry(value).text
        except hosts.HostError as exc:
            raise _invalid(f"{prefix}{exc}") from None
        if text not in out:
            out.append(text)
    return out


def _current(env: dict[str, Any], key: str, where: str) -> list[str]:
    value = env.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StoreError(
            422, "config_invalid", f"{where}.{key}: not a list of strings; fix the file first"
        )
    return value


def _text(value: str) -> str | None:
    try:
        return hosts.parse_entry(value).text
    except hosts.HostError:
        return None  # an invalid entry already in the file: load_bytes reports it


def _put(env: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key``; a new key goes where the schema puts it, so the file stays readable."""
    if key in env:
        env[key] = value
        return
    rank = {k: i for i, k in enumerate(_KEY_ORDER)}
    mine = rank[key]
    items = list(env.items())
    at = len(items)
    for i, (k, _) in enumerate(items):
        if rank.get(k, len(_KEY_ORDER)) > mine:
            at = i
            break
    items.insert(at, (key, value))
    env.clear()
    env.update(items)


def _diff(before: list[str], after: list[str]) -> dict[str, Any]:
    b = {t for v in before if (t := _text(v)) is not None}
    a = set(after)
    return {"added": [h for h in after if h not in b], "removed": sorted(b - a)}


def add(values: Sequence[str]) -> Mutation:
    def mutate(env: dict[str, Any], where: str) -> Change:
        current = _current(env, "secure_endpoints", where)
        new = _canonical(values, f"{where}.secure_endpoints", len(current))
        have = {_text(v) for v in current}
        added = [h for h in new if h not in have]
        if added:
            _put(env, "secure_endpoints", [*current, *added])
        return Change(bool(added), added, {"already_present": [h for h in new if h in have]})

    return mutate


def remove(values: Sequence[str]) -> Mutation:
    def mutate(env: dict[str, Any], where: str) -> Change:
        current = _current(env, "secure_endpoints", where)
        gone = set(_canonical(values, None))
        kept = [v for v in current if _text(v) not in gone]
        removed = sorted({t for v in current if (t := _text(v)) in gone})
        if removed:
            env["secure_endpoints"] = kept
        return Change(bool(removed), removed, {"absent": sorted(gone - set(removed))})

    return mutate


def replace(values: Sequence[str]) -> Mutation:
    def mutate(env: dict[str, Any], where: str) -> Change:
        current = _current(env, "secure_endpoints", where)
        new = _canonical(values, f"{where}.secure_endpoints")
        if new == current:
            return Change(False, new)
        _put(env, "secure_endpoints", new)
        return Change(True, new, _diff(current, new))

    return mutate


def set_enforcement(mode: str) -> Mutation:
    def mutate(env: dict[str, Any], where: str) -> Change:
        if mode not in ENFORCEMENT_MODES:
            raise StoreError(
                422,
                "invalid",
                f"{where}.enforcement: {mode!r} is not one of {', '.join(ENFORCEMENT_MODES)}",
            )
        before = env.get("enforcement", "enforce")
        if before == mode:
            return Change(False, [mode])
        _put(env, "enforcement", mode)
        return Change(True, [mode], {"previous": before})

    return mutate


def promote() -> Mutation:
    def mutate(env: dict[str, Any], where: str) -> Change:
        candidate = env.get("candidate_endpoints")
        if candidate is None:
            raise StoreError(
                409,
                "no_candidate",
                f"{where}: environment {env.get('name')!r} has no candidate_endpoints to promote",
            )
        current = _current(env, "secure_endpoints", where)
        new = _canonical(
            _current(env, "candidate_endpoints", where), f"{where}.candidate_endpoints"
        )
        _put(env, "secure_endpoints", new)
        env["candidate_endpoints"] = None
        # Always a change: the candidate list is consumed even when it equals the live one.
        return Change(True, new, _diff(current, new))

    return mutate
