"""Compile a validated config into a frozen Snapshot, and decide requests with it.

Sans-IO: no aiohttp, no sockets, no clocks. Everything a request needs is built here once
per reload: per environment frozensets of hosts, per listener dicts from host to a
prebuilt ``Decision``. A request costs a few dict lookups whatever the list size: the
lookup of contract §2 step 5 is ``host:port`` entry, then exact host, then the longest
wildcard, found by walking the host's own labels (at most 127), never the list.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from gateway import hosts
from gateway.config import Config, Environment, LoadedConfig, Upstream, listeners_of
from gateway.counters import Counters
from gateway.steps import Steps, drive

Action = Literal["forward", "refuse"]
ALLOWED = "gateway_requests_allowed_total"
BLOCKED = "gateway_requests_blocked_total"
DISAGREE = "gateway_candidate_disagreements_total"

HOST_REASONS = ("missing_host", "duplicate_host", "malformed_host", "authority_mismatch")
# Reasons that are the client's fault (400-class), answered the same in every mode.
REFUSAL_STATUS = {
    "missing_host": 400,
    "duplicate_host": 400,
    "malformed_host": 400,
    "authority_mismatch": 400,
    "bad_request": 400,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "sni_mismatch": 421,
}
RECENT_SIZE = 4096
RECENT_MAX_KEY = 255
ALL_MATCHES = ("hostname", "endpoint", "wildcard", "report_only", "enforcement_off")
ALL_REASONS = (
    "unknown_host",
    "missing_host",
    "duplicate_host",
    "malformed_host",
    "authority_mismatch",
    "no_route",
    "sni_mismatch",
    "method_not_allowed",
    "body_too_large",
    "bad_request",
)


@dataclass(frozen=True, slots=True)
class BlockedSpec:
    """What a refused unknown host gets: a status, or ``close`` (nginx's 444)."""

    status: int  # 0 means close the connection without answering
    body: str | None


@dataclass(frozen=True, slots=True, eq=False)
class EnvPolicy:
    name: str
    hostname: hosts.Entry
    enforcement: str
    upstreams: tuple[Upstream, ...]
    blocked: BlockedSpec
    max_body_bytes: int
    connect_s: float
    read_s: float
    locked: bool
    exact: frozenset[str]  # hosts allowed on any port (the hostname included)
    ported: frozenset[str]  # "host:port" entries
    wildcards: frozenset[str]  # wildcard suffixes, without "*."
    candidate: tuple[frozenset[str], frozenset[str], frozenset[str]] | None
    entries: hosts.EntryList

    @property
    def entry_count(self) -> int:
        return len(self.entries)


@dataclass(frozen=True, slots=True, eq=False)
class Decision:
    """One prebuilt outcome. Requests share these objects; nothing here is per request."""

    action: Action
    status: int  # 0 when forwarded; 0 with action "refuse" means close the connection
    environment: str  # "" when none (a label value, contract §5)
    label: str  # the match when forwarded, the reason when refused
    slot: int  # counter slot for allowed/blocked
    env: EnvPolicy | None
    would_block: bool = False  # forwarded only because of report mode
    disagreement: str = ""  # "", "newly_blocked" or "newly_allowed"
    disagreement_slot: int = -1
    body: str | None = None  # custom refusal body, when configured


@dataclass(frozen=True, slots=True)
class Match:
    env: EnvPolicy
    match: str  # hostname | endpoint | wildcard


V = TypeVar("V")
# Keys added to a map between two yields to the loop: about 0.1 ms, and at most one resize
# of the growing map per step (measured: 5 x 20,000 keys take the same total in chunks of
# 500 as in one call per set, with the longest step 1.5 ms instead of 8-11 ms).
MAP_CHUNK = 500


def remember(cache: dict[str, V], key: str, value: V) -> None:
    """Keep a slow-path answer in a cache keyed by client input, bounded: cleared when it
    holds RECENT_SIZE keys, and keys longer than RECENT_MAX_KEY characters never kept."""
    if len(key) <= RECENT_MAX_KEY:
        if len(cache) >= RECENT_SIZE:
            cache.clear()
        cache[key] = value


def fill(target: dict[str, V], keys: Iterable[str], value: V) -> Steps[None]:
    """``target.update(dict.fromkeys(keys, value))`` in chunks, so a reload building a
    100,000-key map gives the event loop back every few hundred keys."""
    it = iter(keys)
    while chunk := dict.fromkeys(itertools.islice(it, MAP_CHUNK), value):
        target.update(chunk)
        yield


class Router:
    """host -> environment for one listener, with nginx's precedence.

    Looks the host up in each environment's own sets rather than in one merged map: a
    listener has a handful of environments, and a reload of 100,000 entries then builds
    no second 100,000-key map (only the request path's ``ListenerPolicy.fast``). Entries
    never overlap between the environments of a listener (config validation refuses it),
    except in candidate lists, where the environment listed last wins, as it would in a
    map filled in order. The hostname wins over an equal entry of its own environment.
    """

    __slots__ = ("default_port", "has_ported", "has_wild", "routes")

    def __init__(self, default_port: int) -> None:
        self.default_port = default_port
        # Latest first: (hostname, exact, ported, wildcards, hostname/endpoint/wildcard Match)
        self.routes: list[
            tuple[str, frozenset[str], frozenset[str], frozenset[str], Match, Match, Match]
        ] = []
        self.has_ported = False
        self.has_wild = False

    def add(self, env: EnvPolicy, use_candidate: bool) -> None:
        exact, ported, wild = (
            env.candidate
            if use_candidate and env.candidate
            else (env.exact, env.ported, env.wildcards)
        )
        self.routes.insert(
            0,
            (
                env.hostname.host,
                exact,
                ported,
                wild,
                Match(env, "hostname"),
                Match(env, "endpoint"),
                Match(env, "wildcard"),
            ),
        )
        self.has_ported = self.has_ported or bool(ported)
        self.has_wild = self.has_wild or bool(wild)

    def lookup(self, auth: hosts.Authority) -> Match | None:
        found = self.lookup_rule(auth)
        return found[0] if found is not None else None

    def lookup_rule(self, auth: hosts.Authority) -> tuple[Match, str] | None:
        """The match and the entry (canonical text) that made it."""
        host = auth.host
        if self.has_ported:
            port = auth.port if auth.port is not None else self.default_port
            key = f"{host}:{port}"
            for _, _, ported, _, _, endpoint, _ in self.routes:
                if key in ported:
                    return endpoint, key
        for hostname, exact, _, _, by_hostname, endpoint, _ in self.routes:
            if host == hostname:
                return by_hostname, host
            if host in exact:
                return endpoint, host
        if self.has_wild and auth.kind == "name":
            for suffix in hosts.wildcard_candidates(host):
                for _, _, _, wild, _, _, wildcard in self.routes:
                    if suffix in wild:
                        return wildcard, "*." + suffix
        return None


@dataclass(frozen=True, slots=True)
class Explanation:
    listener: str
    value: str
    normalised: str | None
    decision: Decision
    rule: str | None
    candidate_action: Action | None
    candidate_rule: str | None
    error: str | None

    def as_dict(self) -> dict[str, object]:
        d = self.decision
        out: dict[str, object] = {
            "listener": self.listener,
            "host": self.value,
            "normalised": self.normalised,
            "environment": d.environment or None,
            "action": d.action,
            "status": d.status if d.action == "refuse" else None,
            "match" if d.action == "forward" else "reason": d.label,
            "rule": self.rule,
            "enforcement": d.env.enforcement if d.env else None,
            "would_block": d.would_block,
        }
        if self.error:
            out["error"] = self.error
        if self.candidate_action is not None:
            out["candidate"] = {
                "action": self.candidate_action,
                "rule": self.candidate_rule,
                "disagreement": d.disagreement or None,
            }
        return out


class ListenerPolicy:
    """Everything one listener needs to decide a request."""

    def __init__(
        self,
        name: str,
        envs: Sequence[EnvPolicy],
        default_env: EnvPolicy | None,
        tls: bool,
        health_path: str | None,
        counters: Counters,
        top_blocked: BlockedSpec,
        proxy_protocol: bool = False,
        *,
        deferred: bool = False,
    ) -> None:
        """``deferred``: leave the request path's map to ``build_fast_map()``, a reload's
        steps; otherwise it is built now."""
        self.name = name
        self.proxy_protocol = proxy_protocol
        self.top_blocked = top_blocked
        self.default_port = 443 if tls else 80
        self.tls = tls
        self.health_path = health_path
        self.envs = tuple(envs)
        self.default_env = default_env
        # Refusals before routing carry the listener's only or default environment.
        if default_env is not None:
            self.label_env = default_env.name
        elif len(envs) == 1:
            self.label_env = envs[0].name
        else:
            self.label_env = ""
        self._counters = counters
        self._decisions: dict[tuple[str, str, str, str], Decision] = {}
        self.live = Router(self.default_port)
        for env in envs:
            self.live.add(env, use_candidate=False)
        self.candidate: Router | None = None
        if any(env.candidate is not None for env in envs):
            self.candidate = Router(self.default_port)
            for env in envs:
                self.candidate.add(env, use_candidate=True)
        self.refusals = {
            reason: self._refusal(reason, self._label_env_policy()) for reason in REFUSAL_STATUS
        }
        self.no_route = self._refusal("no_route", None)
        bad = self.refusals["bad_request"]
        self.version_refusal = Decision(
            "refuse", 505, bad.environment, "bad_request", bad.slot, bad.env
        )
        # Raw Host values exactly as an operator writes an entry skip validation: a value
        # equal to a canonical key is valid by construction. Each key is decided by the
        # slow path below, so the fast path can never disagree with it.
        self._recent: dict[str, tuple[Decision, str]] = {}
        # Values are bare decisions: the key itself is the Host to forward, so a hit
        # costs a dict lookup and one small tuple.
        self.fast: dict[str, Decision] = {}
        if not deferred:
            drive(self.build_fast_map())

    def build_fast_map(self) -> Steps[None]:
        self.fast = yield from (
            self._fast_map() if self.candidate is None else self._fast_map_with_candidates()
        )

    def _fast_map(self) -> Steps[dict[str, Decision]]:
        """Every canonical key, decided from the environments' sets in bulk
        (``dict.fromkeys`` runs in C): a 100,000-entry reload builds this in milliseconds.
        The order of the updates is the lookup's precedence: the hostname over an equal
        entry, and a ``host:port`` entry on the default port over the bare host."""
        fast: dict[str, Decision] = {}
        for env in self.envs:
            yield from fill(fast, env.exact, self._forward(env, "endpoint", ""))
            fast[env.hostname.host] = self._forward(env, "hostname", "")
        default = f":{self.default_port}"
        for env in self.envs:
            decision = self._forward(env, "endpoint", "")
            for k, hp in enumerate(env.ported, 1):
                fast[hp[: -len(default)] if hp.endswith(default) else hp] = decision
                if k % MAP_CHUNK == 0:
                    yield
        return fast

    def _fast_map_with_candidates(self) -> Steps[dict[str, Decision]]:
        # Disagreements depend on each host's candidate lookup: decide entry by entry.
        fast: dict[str, Decision] = {}
        for env in self.envs:
            for k, entry in enumerate(itertools.chain((env.hostname,), env.entries), 1):
                if k % (MAP_CHUNK // 20) == 0:
                    yield
                if entry.kind == "wildcard":
                    continue
                auth = hosts.Authority(entry.host, entry.port, entry.kind)
                fast[self.forward_host(auth)] = self.decide_authority(auth)
        return fast

    def _label_env_policy(self) -> EnvPolicy | None:
        if self.default_env is not None:
            return self.default_env
        return self.envs[0] if len(self.envs) == 1 else None

    def _intern(self, key: tuple[str, str, str, str], make: Decision) -> Decision:
        got = self._decisions.get(key)
        if got is None:
            got = self._decisions[key] = make
        return got

    def _refusal(self, reason: str, env: EnvPolicy | None) -> Decision:
        label_env = env.name if env is not None else self.label_env
        if reason in ("unknown_host", "no_route"):
            spec = env or self._label_env_policy()
            blocked = spec.blocked if spec is not None else self.top_blocked
            status, body = blocked.status, blocked.body
        else:
            status, body = REFUSAL_STATUS[reason], None
        return Decision(
            action="refuse",
            status=status,
            environment=label_env,
            label=reason,
            slot=self._counters.slot(BLOCKED, (self.name, label_env, reason)),
            env=env,
            body=body,
        )

    def _forward(self, env: EnvPolicy, match: str, disagreement: str) -> Decision:
        got = self._decisions.get((env.name, match, "f", disagreement))
        if got is not None:
            return got
        return self._intern(
            (env.name, match, "f", disagreement),
            Decision(
                action="forward",
                status=0,
                environment=env.name,
                label=match,
                slot=self._counters.slot(ALLOWED, (self.name, env.name, match)),
                env=env,
                would_block=match == "report_only",
                disagreement=disagreement,
                disagreement_slot=self._counters.slot(DISAGREE, (env.name, disagreement))
                if disagreement
                else -1,
            ),
        )

    def _blocked(self, env: EnvPolicy, disagreement: str) -> Decision:
        got = self._decisions.get((env.name, "unknown_host", "r", disagreement))
        if got is not None:
            return got
        base = self._refusal("unknown_host", env)
        if not disagreement:
            return self._intern((env.name, "unknown_host", "r", ""), base)
        return self._intern(
            (env.name, "unknown_host", "r", disagreement),
            Decision(
                action="refuse",
                status=base.status,
                environment=base.environment,
                label="unknown_host",
                slot=base.slot,
                env=env,
                body=base.body,
                disagreement=disagreement,
                disagreement_slot=self._counters.slot(DISAGREE, (env.name, disagreement)),
            ),
        )

    # -- deciding -------------------------------------------------------------------------

    def decide_authority(self, auth: hosts.Authority) -> Decision:
        live = self.live.lookup(auth)
        disagreement = ""
        if self.candidate is not None:
            cand = self.candidate.lookup(auth)
            env = live.env if live else (cand.env if cand else self.default_env)
            if env is not None and env.candidate is not None and (live is None) != (cand is None):
                disagreement = "newly_blocked" if cand is None else "newly_allowed"
        if live is not None:
            return self._forward(live.env, live.match, disagreement)
        env = self.default_env
        if env is None:
            return self.no_route
        if env.enforcement == "enforce":
            return self._blocked(env, disagreement)
        return self._forward(
            env, "report_only" if env.enforcement == "report" else "enforcement_off", disagreement
        )

    def _decide_value(self, value: str) -> tuple[Decision, str]:
        try:
            auth = hosts.parse_host(value)
        except hosts.MalformedHost:
            return self.refusals["malformed_host"], ""
        return self.decide_authority(auth), self.forward_host(auth)

    def forward_host(self, auth: hosts.Authority) -> str:
        if auth.port is None or auth.port == self.default_port:
            return auth.host
        return f"{auth.host}:{auth.port}"

    def decide_host(self, value: str) -> tuple[Decision, str]:
        """Decide one Host value. Returns the decision and the Host to send upstream."""
        decision = self.fast.get(value)
        if decision is not None:
            return decision, value
        # Real clients repeat the same few spellings ("Www.Acme.com", "acme.com:443"): a
        # small cache of recent slow-path answers saves the parse. It is bounded (cleared
        # when full, values of at most 255 characters) because its keys are client input,
        # and it lives in this snapshot, so a reload starts it afresh.
        recent = self._recent.get(value)
        if recent is not None:
            return recent
        result = self._decide_value(value)
        remember(self._recent, value, result)
        return result

    def decide(
        self, host_values: Sequence[str], method: str = "GET", target: str = "/"
    ) -> tuple[Decision, str]:
        """Contract §2 for one request: the Host header(s), the method and request-target."""
        if len(host_values) != 1:
            return self.refusals["missing_host" if not host_values else "duplicate_host"], ""
        value = host_values[0]
        decision, forward = self.decide_host(value)
        if decision.action == "refuse" and decision.label == "malformed_host":
            return decision, forward
        if method == "CONNECT":
            return self.refusals["method_not_allowed"], ""
        if target == "*" or "#" in target or not target.isascii():
            # "OPTIONS *" asks the server, not a resource: no upstream is the gateway.
            # A fragment is never part of a request-target, which is ASCII (RFC 9112 §3.2);
            # a parser that let either through would forward them on.
            return self.refusals["bad_request"], ""
        # Absolute-form: its authority must name the same host and port as Host, or a
        # front proxy and the app could route on different names.
        if target[:1] != "/" and not self._same_authority(value, target):
            return self.refusals["authority_mismatch"], ""
        return decision, forward

    def _same_authority(self, host_value: str, target: str) -> bool:
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            return False
        authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        try:
            absolute = hosts.parse_absolute_authority(authority, scheme.lower())
            host = hosts.parse_host(host_value)
        except hosts.HostError:
            return False
        default = 443 if scheme.lower() == "https" else 80
        return absolute.host == host.host and (absolute.port or default) == (
            host.port or self.default_port
        )

    def explain(self, value: str) -> Explanation:
        decision, _ = self.decide_host(value)
        try:
            auth = hosts.parse_host(value)
        except hosts.MalformedHost as exc:
            return Explanation(self.name, value, None, decision, None, None, None, str(exc))
        live = self.live.lookup_rule(auth)
        cand_action: Action | None = None
        cand_rule = None
        if self.candidate is not None:
            cand = self.candidate.lookup_rule(auth)
            cand_action = "forward" if cand is not None else "refuse"
            cand_rule = cand[1] if cand else None
            env = decision.env
            if env is not None and env.enforcement != "enforce" and cand is None:
                cand_action = "forward"  # report/off still forwards; the disagreement says why
        return Explanation(
            self.name,
            value,
            self.forward_host(auth) if auth.port is not None else auth.host,
            decision,
            live[1] if live else None,
            cand_action,
            cand_rule,
            None,
        )


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """Everything requests need, compiled once. Swapped whole on reload, never mutated."""

    loaded: LoadedConfig
    envs: dict[str, EnvPolicy]
    listeners: dict[str, ListenerPolicy]
    binds: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def short_sha(self) -> str:
        return self.loaded.sha256[:12]


def _split(
    entries: hosts.EntryList, hostname: hosts.Entry | None
) -> Steps[tuple[frozenset[str], frozenset[str], frozenset[str]]]:
    names, ported, special = entries.split()
    yield
    exact_more = [hostname.host] if hostname is not None else []
    wild: list[str] = []
    for e in special:
        if e.kind == "wildcard":
            wild.append(e.host)
        elif e.port is None:
            exact_more.append(e.host)
        else:
            ported.append(f"{e.host}:{e.port}")
    exact = frozenset(itertools.chain(names, exact_more))  # one copy of a large list
    yield
    return exact, frozenset(ported), frozenset(wild)


def _reused(env: Environment, loaded: LoadedConfig, previous: Snapshot | None) -> EnvPolicy | None:
    if previous is None or env.name not in previous.envs:
        return None
    old_cfg, new_cfg = previous.config, loaded.config
    inherited = ("blocked_response", "limits", "timeouts")
    if any(getattr(old_cfg, k) != getattr(new_cfg, k) for k in inherited):
        return None
    old_env = next(e for e in old_cfg.environments if e.name == env.name)
    return previous.envs[env.name] if old_env == env else None


def _env_policy(env: Environment, loaded: LoadedConfig) -> Steps[EnvPolicy]:
    cfg = loaded.config
    br = env.blocked_response or cfg.blocked_response
    hostname = loaded.hostnames[env.name]
    exact, ported, wild = yield from _split(loaded.entries[env.name], hostname)
    cand_entries = loaded.candidates[env.name]
    candidate = (yield from _split(cand_entries, hostname)) if cand_entries is not None else None
    limits, timeouts = env.limits, env.timeouts
    return EnvPolicy(
        name=env.name,
        hostname=hostname,
        enforcement=env.enforcement,
        upstreams=loaded.upstreams[env.name],
        blocked=BlockedSpec(0 if br.status == "close" else int(br.status), br.body),
        max_body_bytes=(
            limits.max_body_bytes
            if limits and limits.max_body_bytes is not None
            else cfg.limits.max_body_bytes
        ),
        connect_s=(
            timeouts.connect_s
            if timeouts and timeouts.connect_s is not None
            else cfg.timeouts.connect_s
        ),
        read_s=(
            timeouts.read_s if timeouts and timeouts.read_s is not None else cfg.timeouts.read_s
        ),
        locked=env.locked,
        exact=exact,
        ported=ported,
        wildcards=wild,
        candidate=candidate,
        entries=loaded.entries[env.name],
    )


def compile_config(
    loaded: LoadedConfig,
    counters: Counters,
    listen: str = "0.0.0.0:8080",
    previous: Snapshot | None = None,
) -> Snapshot:
    """Build a Snapshot. Pure apart from allocating counter slots (which only grow).

    With ``previous`` (the snapshot in force), an environment whose section and the
    top-level defaults it inherits are unchanged keeps its compiled sets."""
    return drive(compile_steps(loaded, counters, listen, previous))


def compile_steps(
    loaded: LoadedConfig,
    counters: Counters,
    listen: str = "0.0.0.0:8080",
    previous: Snapshot | None = None,
) -> Steps[Snapshot]:
    """``compile_config`` as bounded steps (one environment or listener each), so that a
    reload can run it on the event loop between requests (gateway/steps.py)."""
    envs: dict[str, EnvPolicy] = {}
    for section in loaded.config.environments:
        reused = _reused(section, loaded, previous)
        envs[section.name] = reused or (yield from _env_policy(section, loaded))
        yield
    listeners: dict[str, ListenerPolicy] = {}
    binds: dict[str, str] = {}
    for lst in listeners_of(loaded.config, listen):
        members = [envs[n] for n in lst.environments]
        default = envs[lst.default_environment] if lst.default_environment else None
        top = loaded.config.blocked_response
        policy = ListenerPolicy(
            lst.name,
            members,
            default,
            lst.tls is not None,
            lst.health_path,
            counters,
            BlockedSpec(0 if top.status == "close" else int(top.status), top.body),
            lst.proxy_protocol,
            deferred=True,
        )
        yield from policy.build_fast_map()
        # Pre-create the series dashboards plot, so rate() sees 0 rather than nothing.
        for env in members:
            for m in ("hostname", "endpoint"):
                counters.slot(ALLOWED, (lst.name, env.name, m))
        counters.slot(BLOCKED, (lst.name, policy.label_env, "unknown_host"))
        listeners[lst.name] = policy
        binds[lst.name] = lst.bind
        yield
    return Snapshot(loaded=loaded, envs=envs, listeners=listeners, binds=binds)
