"""The request path's view of one listener's policy in one snapshot, as engine objects.

``policy.Decision`` and ``policy.ListenerPolicy`` belong to the sans-IO core, which stays
interpreted: every field the engine read from them cost a Python attribute lookup (type
cache, descriptor, instance dict), about 23 per refused request and a sixth of the engine's
own instructions in the compiled build. The engine reads them once per decision and per
snapshot instead, into the classes below, which the compiled build makes C structs.

Nothing here is per request: a ``ListenerView`` is made when a listener first serves a new
snapshot, and an ``Outcome`` the first time that view meets a decision. Both are bounded by
the config: decisions are interned per listener and snapshot (``ListenerPolicy._intern``),
and ``recent`` and ``lines``, keyed by client input, are bounded as ``ListenerPolicy``'s own
(``remember``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, final

from gateway.policy import Decision, EnvPolicy, ListenerPolicy, Snapshot, remember

from .headers import host_lines
from .prebuilt import Refusal

BODY_TOO_LARGE: Final = "body_too_large"


@final
class Outcome:
    """The fields of one ``Decision`` that requests read, and its refusal's bytes."""

    def __init__(self, decision: Decision, short_sha: str) -> None:
        self.decision = decision
        self.refuse = decision.action == "refuse"
        self.status = decision.status
        self.slot = decision.slot
        self.disagreement_slot = decision.disagreement_slot
        # Counted in the top blocked hosts and written to the refusal log.
        self.noted = self.refuse or decision.would_block
        self.body_too_large = decision.label == BODY_TOO_LARGE
        self.env: EnvPolicy | None = decision.env
        # Status 0 closes the connection unanswered: no bytes to prebuild.
        self.refusal: Refusal | None = (
            Refusal(decision, short_sha) if self.refuse and decision.status else None
        )


@final
class ListenerView:
    """One listener's ``ListenerPolicy`` in one snapshot, for the request path."""

    def __init__(self, snap: Snapshot, lp: ListenerPolicy) -> None:
        self.snap = snap
        self.lp = lp
        self.exact: dict[str, Decision] = lp.fast
        self.health_path: str | None = lp.health_path
        self.tls = lp.tls
        self.scheme = b"https" if lp.tls else b"http"  # X-Forwarded-Proto
        self.trusted_proxies = snap.loaded.trusted_proxies
        self.expose_config = snap.loaded.config.expose_config_version
        self.config_sha = snap.short_sha.encode("ascii")
        self.outcomes: dict[Decision, Outcome] = {}
        self.recent: dict[str, tuple[Outcome, str]] = {}
        # headers.host_lines() per forwarded Host (a wildcard endpoint admits many:
        # bounded as ``recent``).
        self.lines: dict[str, tuple[bytes, bytes]] = {}
        self.version_refusal = self.outcome(lp.version_refusal)
        self.refusals: dict[str, Outcome] = {
            reason: self.outcome(d) for reason, d in lp.refusals.items()
        }

    def outcome(self, decision: Decision) -> Outcome:
        got = self.outcomes.get(decision)
        if got is None:
            got = self.outcomes[decision] = Outcome(decision, self.snap.short_sha)
        return got

    def decide_host(self, value: str) -> tuple[Outcome, str]:
        """``ListenerPolicy.decide_host``, answered from this view's own cache when it can:
        a refused Host repeats (a scanner, a misconfigured client), and asking the policy
        again costs an interpreted call."""
        decision = self.exact.get(value)
        if decision is not None:
            return self.outcome(decision), value
        got = self.recent.get(value)
        if got is not None:
            return got
        decision, forward_host = self.lp.decide_host(value)
        result = (self.outcome(decision), forward_host)
        remember(self.recent, value, result)
        return result

    def host_lines(self, forward_host: str) -> tuple[bytes, bytes]:
        got = self.lines.get(forward_host)
        if got is None:
            got = host_lines(forward_host.encode("ascii"), self.scheme)
            remember(self.lines, forward_host, got)
        return got

    def decide(self, values: Sequence[str], method: str, target: str) -> tuple[Outcome, str]:
        decision, forward_host = self.lp.decide(values, method, target)
        return self.outcome(decision), forward_host
