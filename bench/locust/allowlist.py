"""What one config version allows, re-derived independently of the gateway's code.

The Locust suite checks the gateway against this model, so it deliberately does not import
``gateway.policy``: a bug shared by both would pass unnoticed. It covers the forms the suite
uses (contract §1): exact host (any port), ``host:port`` (that port only), wildcard
``*.suffix`` (one or more labels in front, never the apex, any port), IPv4 and bracketed
IPv6 literals, and the environment's ``hostname`` (always allowed). A Host without a port
means port 80 (the suite's listeners are plain HTTP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 80


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # normalised: lowercase, one trailing dot dropped, IPv6 bracketed RFC 5952
    port: int

    @property
    def forwarded(self) -> str:
        """The Host the upstream must see (contract §2): the port only when not default."""
        return self.host if self.port == DEFAULT_PORT else f"{self.host}:{self.port}"


def split_host(value: str) -> HostPort:
    """Normalise a (valid) Host value the way contract §2 step 3 does."""
    value = value.strip().lower()
    port = DEFAULT_PORT
    if value.startswith("["):
        end = value.index("]")
        host, rest = value[: end + 1], value[end + 1 :]
        if rest.startswith(":"):
            port = int(rest[1:])
        host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        return HostPort(host, port)
    if ":" in value:
        value, _, port_text = value.rpartition(":")
        port = int(port_text)
    if value.endswith("."):
        value = value[:-1]
    return HostPort(value, port)


@dataclass(frozen=True, slots=True, eq=True)
class EnvAllowlist:
    name: str
    hostname: str
    exact: frozenset[str]  # hosts allowed on any port
    ported: frozenset[str]  # "host:port"
    wildcards: frozenset[str]  # suffixes, without "*."

    def allows(self, hp: HostPort) -> bool:
        if hp.host == self.hostname or hp.host in self.exact:
            return True
        if f"{hp.host}:{hp.port}" in self.ported:
            return True
        if self.wildcards and not hp.host.startswith("["):
            labels = hp.host.split(".")
            # At least one label in front of the suffix: never the apex itself.
            for i in range(1, len(labels)):
                if ".".join(labels[i:]) in self.wildcards:
                    return True
        return False

    def sample_hosts(self) -> Iterator[str]:
        """Concrete Host values this environment allows (wildcards: one made-up label)."""
        yield self.hostname
        yield from self.exact
        yield from self.ported
        for suffix in self.wildcards:
            yield f"w1.{suffix}"
            yield f"a.b.{suffix}"


def env_allowlist(name: str, hostname: str, entries: Iterable[str]) -> EnvAllowlist:
    exact, ported, wild = set(), set(), set()
    for raw in entries:
        # Fast path for the common plain lowercase name: a 100,000-entry version is then
        # built in tens of milliseconds, during which this Locust process serves no user.
        if raw.islower() and ":" not in raw and raw[-1:] != "." and raw[:1] not in "*[":
            exact.add(raw)
            continue
        entry = raw.strip().lower()
        if entry.startswith("*."):
            wild.add(entry[2:].rstrip("."))
            continue
        hp = split_host(entry)
        if ("]:" in entry) if entry.startswith("[") else (":" in entry):
            ported.add(f"{hp.host}:{hp.port}")
        else:
            exact.add(hp.host)
    return EnvAllowlist(
        name, split_host(hostname).host, frozenset(exact), frozenset(ported), frozenset(wild)
    )


@dataclass(frozen=True, slots=True)
class Allowlist:
    """Every environment of one config version (one listener serves them all, with no
    default environment: a host no environment allows is refused with 503)."""

    envs: tuple[EnvAllowlist, ...]

    def allows(self, hp: HostPort) -> bool:
        return any(env.allows(hp) for env in self.envs)

    def env(self, name: str) -> EnvAllowlist | None:
        return next((e for e in self.envs if e.name == name), None)

    @property
    def entry_count(self) -> int:
        return sum(len(e.exact) + len(e.ported) + len(e.wildcards) for e in self.envs)


def from_config(doc: dict[str, Any]) -> Allowlist:
    """From the config file's JSON document (contract §1), or from the admin API's
    ``GET /api/v1/environments`` answer: both list ``environments`` with ``name``,
    ``hostname`` and ``secure_endpoints``."""
    return Allowlist(
        tuple(
            env_allowlist(env["name"], env["hostname"], env.get("secure_endpoints") or [])
            for env in doc["environments"]
        )
    )
