"""``gateway check``'s lint: things a valid config may still get wrong.

Levels: ``warning`` (likely a mistake, or a risk worth a second look; ``--strict`` fails
on these) and ``info`` (what the gateway did with an entry, said once). Errors are the
config's own validation (``config.load_bytes``) and never reach here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway import hosts
from gateway.config import Environment, LoadedConfig, listeners_of

Level = Literal["warning", "info"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "where": self.where, "message": self.message}


def lint(loaded: LoadedConfig) -> list[Finding]:
    out: list[Finding] = []
    for i, env in enumerate(loaded.config.environments):
        where = f"environments[{i}]"
        hostname = loaded.hostnames[env.name]
        _lint_list(env.secure_endpoints, f"{where}.secure_endpoints", hostname, out)
        if env.candidate_endpoints is not None:
            _lint_list(env.candidate_endpoints, f"{where}.candidate_endpoints", hostname, out)
            _candidate_diff(loaded, env, where, out)
        if not loaded.entries[env.name]:
            out.append(
                Finding(
                    "warning",
                    where,
                    f"environment {env.name!r}: its hostname {hostname.text!r} is the only "
                    "name allowed; every custom domain will be refused once enforced "
                    "(list them in secure_endpoints first)",
                )
            )
        if env.enforcement != "enforce":
            what = (
                "let through and counted as would-block"
                if env.enforcement == "report"
                else ("let through (the check is off)")
            )
            message = f"{env.enforcement}: unknown hosts are {what}"
            out.append(Finding("info", f"{where}.enforcement", message))
    _overlaps(loaded, out)
    return out


def _lint_list(values: list[str], where: str, hostname: hosts.Entry, out: list[Finding]) -> None:
    parsed = [(k, v, hosts.parse_entry(v)) for k, v in enumerate(values)]
    wildcards = {e.host: k for k, _, e in parsed if e.kind == "wildcard"}
    first: dict[str, int] = {}
    for k, raw, entry in parsed:
        at = f"{where}[{k}]"
        if not raw.isascii():
            out.append(Finding("info", at, f"{raw!r} is the IDN A-label {entry.text!r}"))
        elif raw != entry.text:
            out.append(Finding("info", at, f"{raw!r} is normalised to {entry.text!r}"))
        if entry.text in first:
            out.append(
                Finding("warning", at, f"{entry.text!r} duplicates {where}[{first[entry.text]}]")
            )
            continue
        first[entry.text] = k
        if entry.kind != "wildcard" and entry.host == hostname.host:
            out.append(
                Finding(
                    "warning",
                    at,
                    f"{entry.text!r} is the environment's hostname, which is always allowed "
                    "(on every port)",
                )
            )
        cover = _covering_wildcard(entry, wildcards)
        if cover is not None:
            by = f"'*.{cover}' ({where}[{wildcards[cover]}])"
            out.append(Finding("warning", at, f"{entry.text!r} is already covered by {by}"))
        if entry.kind in ("ipv4", "ipv6"):
            out.append(
                Finding(
                    "warning",
                    at,
                    f"IP-literal entry {entry.text!r}: anyone who reaches the address directly "
                    "(scanners, other tenants of the IP) gets through",
                )
            )
        if entry.kind == "wildcard":
            if hosts.is_public_suffix_wildcard(entry.host):
                out.append(
                    Finding(
                        "warning",
                        at,
                        f"{entry.text!r} covers the public suffix {entry.host!r}: names "
                        "registered by anyone would get through",
                    )
                )
            else:
                out.append(
                    Finding(
                        "warning",
                        at,
                        f"wildcard {entry.text!r}: every name under {entry.host!r}, at any "
                        "depth, gets through; list the names if you can",
                    )
                )


def _covering_wildcard(entry: hosts.Entry, wildcards: dict[str, int]) -> str | None:
    if entry.kind not in ("name", "wildcard"):
        return None
    for suffix in hosts.wildcard_candidates(entry.host):
        if suffix in wildcards:
            return suffix
    return None


def _candidate_diff(loaded: LoadedConfig, env: Environment, where: str, out: list[Finding]) -> None:
    live = set(loaded.entries[env.name].texts)
    cand = set(c.texts) if (c := loaded.candidates[env.name]) is not None else set()
    added, removed = sorted(cand - live), sorted(live - cand)
    if added or removed:
        parts = []
        if added:
            parts.append("adds " + ", ".join(added))
        if removed:
            parts.append("removes " + ", ".join(removed))
        out.append(
            Finding(
                "info",
                f"{where}.candidate_endpoints",
                "the candidate list " + "; ".join(parts) + " (report-only until promoted)",
            )
        )


def _overlaps(loaded: LoadedConfig, out: list[Finding]) -> None:
    """Names of one environment matched by another's wildcard on the same listener: the
    more specific entry wins (nginx's precedence), which may not be what was meant."""
    for lst in listeners_of(loaded.config):
        wild: dict[str, str] = {}
        for name in lst.environments:
            for e in loaded.entries[name]:
                if e.kind == "wildcard":
                    wild.setdefault(e.host, name)
        if not wild:
            continue
        for name in lst.environments:
            names = [loaded.hostnames[name], *loaded.entries[name]]
            for e in names:
                if e.kind not in ("name", "wildcard"):
                    continue
                for suffix in hosts.wildcard_candidates(e.host):
                    other = wild.get(suffix)
                    if other is not None and other != name:
                        out.append(
                            Finding(
                                "warning",
                                f"listener {lst.name}",
                                f"{e.text!r} ({name}) is also matched by '*.{suffix}' "
                                f"({other}); the more specific entry wins, so it goes to "
                                f"{name}",
                            )
                        )
                        break


def summary(findings: list[Finding]) -> dict[str, Any]:
    return {
        "warnings": [f.as_dict() for f in findings if f.level == "warning"],
        "info": [f.as_dict() for f in findings if f.level == "info"],
    }
