"""Is a response the right decision for the config version that made it?

Every gateway response in the suite carries ``X-Gateway-Config`` (``expose_config_version``
is on): the first 12 hex digits of the sha256 of the config file that decided it. Given
that version's allowlist, a response is right when:

- the Host is allowed: 200 from the upstream (the demo upstream's JSON, with an
  ``upstream`` key), and the upstream saw ``Host`` equal to the normalised host (port only
  when not the default one);
- the Host is valid but not allowed: 503 with "Host header does not match";
- the Host is malformed: 400, whatever the version.

Anything else is a wrong decision (forwarded what should be refused, refused what should be
forwarded, or treated a malformed Host as valid) or a wrong forward (right decision, wrong
``Host`` upstream). A 502/504 for an allowed host is an upstream error: the decision was
right, the request still failed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.locust.allowlist import Allowlist, split_host

REFUSAL_TEXT = b"Host header does not match"
MAX_EXAMPLES = 20

Expect = Literal["forward", "refuse", "malformed", "unknown"]
Kind = Literal["ok", "wrong_decision", "wrong_forward", "upstream_error", "no_version"]


@dataclass(frozen=True, slots=True)
class Observed:
    """One answered request, as much of it as the check needs."""

    name: str  # the Locust request name (legit, scanner, malformed)
    host: str  # the Host value sent
    malformed: bool  # sent as a malformed value on purpose
    status: int
    version: str | None  # X-Gateway-Config
    body: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    expect: Expect
    kind: Kind
    message: str = ""  # stable text (a Locust failure is grouped by it); "" when ok

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def expectation(obs: Observed, allowlist: Allowlist) -> Expect:
    if obs.malformed:
        return "malformed"
    return "forward" if allowlist.allows(split_host(obs.host)) else "refuse"


def judge(obs: Observed, allowlist: Allowlist) -> Verdict:
    expect = expectation(obs, allowlist)
    got = f"got {obs.status}"
    if expect == "malformed":
        if obs.status == 400:
            return Verdict(expect, "ok")
        return Verdict(expect, "wrong_decision", f"wrong decision: malformed Host, {got}")
    if expect == "refuse":
        if obs.status == 503 and REFUSAL_TEXT in obs.body:
            return Verdict(expect, "ok")
        # A 502 here means the gateway tried to forward: wrong as well.
        return Verdict(expect, "wrong_decision", f"wrong decision: expected refusal, {got}")
    if obs.status in (502, 504):
        return Verdict(expect, "upstream_error", f"allowed host: upstream error {obs.status}")
    if obs.status != 200:
        return Verdict(expect, "wrong_decision", f"wrong decision: expected forward, {got}")
    seen = upstream_host(obs.body)
    want = split_host(obs.host).forwarded
    if seen != want:
        return Verdict(
            expect, "wrong_forward", "wrong forward: the upstream did not see the normalised Host"
        )
    return Verdict(expect, "ok")


def upstream_host(body: bytes) -> str | None:
    """The Host the demo upstream says it received; None if this is not its answer."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "upstream" not in doc:
        return None
    hosts = [v for k, v in doc.get("headers", []) if k.lower() == "host"]
    return hosts[0] if len(hosts) == 1 else None


@dataclass
class Tally:
    """What the checks found, in one Locust process."""

    checks: int = 0
    verified: int = 0  # judged when answered
    deferred: int = 0  # judged later, once the version became known
    unverified: int = 0  # the version never became known (see VersionRegistry)
    kinds: Counter[str] = field(default_factory=Counter)
    expects: Counter[str] = field(default_factory=Counter)
    versions_seen: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    def add(self, obs: Observed, verdict: Verdict, deferred: bool) -> None:
        if deferred:
            self.deferred += 1
        else:
            self.verified += 1
        self.kinds[verdict.kind] += 1
        self.expects[verdict.expect] += 1
        if not verdict.ok and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                f"{verdict.message}: {obs.name} Host {obs.host!r} config {obs.version} "
                f"status {obs.status} body {obs.body[:120]!r}"
            )

    @property
    def wrong_decisions(self) -> int:
        return self.kinds["wrong_decision"]

    @property
    def wrong_forwards(self) -> int:
        return self.kinds["wrong_forward"]

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "verified": self.verified,
            "deferred": self.deferred,
            "unverified": self.unverified,
            "no_version_header": self.kinds["no_version"],
            "wrong_decisions": self.wrong_decisions,
            "wrong_forwards": self.wrong_forwards,
            "upstream_errors": self.kinds["upstream_error"],
            "by_expectation": dict(self.expects),
            "versions_seen": len(self.versions_seen),
            "examples": self.examples,
        }
