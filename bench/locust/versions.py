"""Which allowlist each config version had, learned while the allowlist keeps changing.

A response names its version (``X-Gateway-Config``); its check needs that version's
allowlist. Versions are learned from three places, all exact (a sha256 and the content it
is the hash of):

- the file operator registers each version it writes, before writing it, so the gateway
  can never serve it first;
- the config file itself, polled every 50 ms (``ConfigFile``): API writes land in the file
  before the gateway reloads them, so they are usually known before they serve;
- ``GET /api/v1/environments`` (``AdminApi``): the version serving now, with its lists. This
  is how a distributed worker without the file learns versions.

A response whose version is not known yet is kept (bounded) and judged when the version
arrives; one never learned by the end counts as unverified, not as wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.locust.allowlist import Allowlist, EnvAllowlist, from_config
from bench.locust.checks import Observed, Tally, Verdict, judge

SHORT = 12  # X-Gateway-Config carries this many hex digits of the sha256
MAX_VERSIONS = 256  # responses name live versions: old ones are never asked for again
MAX_PENDING = 50_000
RECENT_CHANGES = 64


def short(sha: str) -> str:
    return sha[:SHORT]


class VersionRegistry:
    """Versions by short sha, the checks waiting for one, and the pool of hosts to try."""

    def __init__(self) -> None:
        self.versions: OrderedDict[str, Allowlist] = OrderedDict()
        self.latest: Allowlist | None = None
        self.pending: dict[str, list[Observed]] = {}
        self.pending_count = 0
        self.tally = Tally()
        # Every concrete host any version allowed, so that hosts removed later are still
        # tried (and must then be refused); and the hosts the operators changed recently,
        # tried more often because that is where a stale decision would show.
        self.pool: list[str] = []
        self._pooled: set[str] = set()
        self.recent: deque[str] = deque(maxlen=RECENT_CHANGES)
        # Called for a check judged late, so the locustfile can report it to Locust.
        self.on_deferred: Callable[[Observed, Verdict], None] | None = None

    # -- versions ----------------------------------------------------------------------------

    def knows(self, sha: str) -> bool:
        return short(sha) in self.versions

    def register(self, sha: str, allowlist: Allowlist) -> bool:
        """Record a version; judge the checks that were waiting for it. False if known."""
        key = short(sha)
        if key in self.versions:
            return False
        allowlist = self._share(allowlist)
        self.versions[key] = allowlist
        while len(self.versions) > MAX_VERSIONS:
            self.versions.popitem(last=False)
        self._extend_pool(allowlist)
        self.latest = allowlist
        for obs in self.pending.pop(key, []):
            self.pending_count -= 1
            verdict = judge(obs, allowlist)
            self.tally.add(obs, verdict, deferred=True)
            if not verdict.ok and self.on_deferred is not None:
                self.on_deferred(obs, verdict)
        return True

    def _share(self, allowlist: Allowlist) -> Allowlist:
        """Reuse the previous version's environment objects where unchanged: an operator
        changes one environment at a time, and 100,000 entries per version would
        otherwise cost ~10 MB each."""
        if self.latest is None:
            return allowlist
        envs = []
        for env in allowlist.envs:
            old = self.latest.env(env.name)
            envs.append(old if old is not None and old == env else env)
        return Allowlist(tuple(envs))

    def _extend_pool(self, allowlist: Allowlist) -> None:
        before = set(map(id, self.latest.envs)) if self.latest else set()
        for env in allowlist.envs:
            if id(env) in before:
                continue  # shared with the previous version: its hosts are pooled already
            for host in env.sample_hosts():
                if host not in self._pooled:
                    self._pooled.add(host)
                    self.pool.append(host)

    def env_names(self) -> list[str]:
        return [e.name for e in self.latest.envs] if self.latest else []

    def env(self, name: str) -> EnvAllowlist | None:
        return self.latest.env(name) if self.latest else None

    def note_change(self, host: str) -> None:
        """An operator added or removed ``host``: try it more often from now on."""
        self.recent.append(host)
        if host not in self._pooled:
            self._pooled.add(host)
            self.pool.append(host)

    def pick(self, recent_share: float = 0.3) -> str:
        if self.recent and random.random() < recent_share:
            return random.choice(self.recent)
        return random.choice(self.pool)

    # -- checks ------------------------------------------------------------------------------

    def check(self, obs: Observed) -> Verdict | None:
        """The verdict now, or None when it has to wait for the version to be known."""
        self.tally.checks += 1
        if obs.version is None:
            # expose_config_version is on: every answer of the gateway must say its version.
            verdict = Verdict("unknown", "no_version", "no X-Gateway-Config on the response")
            self.tally.add(obs, verdict, deferred=False)
            return verdict
        self.tally.versions_seen.add(obs.version)
        allowlist = self.versions.get(obs.version)
        if allowlist is None:
            if self.pending_count >= MAX_PENDING:
                self.tally.unverified += 1
            else:
                self.pending.setdefault(obs.version, []).append(obs)
                self.pending_count += 1
            return None
        verdict = judge(obs, allowlist)
        self.tally.add(obs, verdict, deferred=False)
        return verdict

    def finish(self) -> None:
        """The run is over: whatever still waits is unverified."""
        self.tally.unverified += self.pending_count
        self.pending.clear()
        self.pending_count = 0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_version(raw: bytes) -> tuple[str, Allowlist]:
    """(sha256, allowlist) of a config file's bytes: the gateway hashes the same bytes."""
    return sha256_hex(raw), from_config(orjson.loads(raw))


class ConfigFile:
    """Learns every version that passes through the config file, whoever writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def poll(self, registry: VersionRegistry) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return
        self._seen = stamp
        try:
            raw = self.path.read_bytes()
        except OSError:
            return
        sha = sha256_hex(raw)
        if registry.knows(sha):
            return
        # Not a config the gateway would accept either (it keeps the old one): skip it.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            registry.register(sha, from_config(orjson.loads(raw)))


class AdminApi:
    """The version serving now, from ``GET /api/v1/environments`` (viewer token)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def fetch(self, registry: VersionRegistry, timeout: float = 10.0) -> str:
        req = urllib.request.Request(self.url + "/api/v1/environments")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            doc = json.loads(r.read())
        sha = str(doc["config_sha256"])
        registry.register(sha, from_config(doc))
        return sha
