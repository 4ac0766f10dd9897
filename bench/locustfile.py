"""Locust suite for the gateway (issue 7): correctness under load while the allowlist changes.

User classes:

- ``LegitUser``: requests for hosts of every environment (exact, ``host:port``, wildcard,
  IP literals, the environments' own hostnames), sometimes upper-cased or with a trailing
  dot, and often for hosts the operators just added or removed;
- ``ScannerUser``: unknown hosts, IP literals, look-alikes of allowed names, wildcard apexes;
- ``MalformedUser``: Host values the contract calls malformed (must get 400);
- ``FileOperator``: edits the config file like an editor (atomic rename) every few seconds;
- ``ApiOperator``: adds and removes endpoints through the admin API every few seconds.

Every response is checked against the allowlist of the config version that decided it
(``X-Gateway-Config``, see ``bench/locust/checks.py``); a wrong decision is a Locust failure.
How versions are learned: ``bench/locust/versions.py``.

Settings (environment variables; ``python -m bench.locust_run`` sets them):

- ``GW_CONFIG_PATH``: the gateway's config file (file operator; version tracking);
- ``GW_ADMIN_URL``, ``GW_ADMIN_TOKEN``: admin listener and an admin token (API operator;
  versions for workers that cannot read the file);
- ``GW_OPERATOR_INTERVAL``: ``MIN,MAX`` seconds between an operator's changes (``3,5``);
- ``GW_LOCUST_REPORT``: where this process writes its check report (JSON) at the end.

Run it through ``python -m bench.locust_run`` (starts the gateway and an upstream), or
against a running gateway: ``locust -f bench/locustfile.py --host http://GATEWAY:PORT``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gevent
import orjson
from locust import FastHttpUser, User, between, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from bench.locust.checks import Observed, Verdict
from bench.locust.versions import AdminApi, ConfigFile, VersionRegistry, config_version, short

log = logging.getLogger("gateway-locust")


def _interval() -> tuple[float, float]:
    lo, _, hi = os.environ.get("GW_OPERATOR_INTERVAL", "3,5").partition(",")
    return float(lo), float(hi or lo)


CONFIG_PATH = Path(p) if (p := os.environ.get("GW_CONFIG_PATH")) else None
ADMIN_URL = os.environ.get("GW_ADMIN_URL")
ADMIN_TOKEN = os.environ.get("GW_ADMIN_TOKEN")
REPORT_PATH = os.environ.get("GW_LOCUST_REPORT")
OPERATOR_INTERVAL = _interval()
MAX_OWN_HOSTS = 4  # an operator's own added hosts alive at once

REGISTRY = VersionRegistry()
CONFIG_FILE = ConfigFile(CONFIG_PATH) if CONFIG_PATH else None
ADMIN = AdminApi(ADMIN_URL, ADMIN_TOKEN) if ADMIN_URL else None
OPS: Counter[str] = Counter()  # what the operators did
PRODUCED: set[str] = set()  # short shas of the versions the operators made
_watcher: gevent.Greenlet | None = None
_worker_totals: dict[str, dict[str, Any]] = {}  # master: each worker's last report


class CheckFailed(Exception):
    """A response judged wrong after Locust recorded it (see _report_late)."""


# -- the checked request ----------------------------------------------------------------------


def _fire(request_type: str, name: str, t0: float, length: int, exc: Exception | None) -> None:
    """Report something that is not a FastHttpUser request (a file edit, a late check)
    to Locust's statistics."""
    events.request.fire(  # type: ignore[no-untyped-call]  # Locust's EventHook is untyped
        request_type=request_type,
        name=name,
        response_time=(time.perf_counter() - t0) * 1000,
        response_length=length,
        response=None,
        context={},
        exception=exc,
        start_time=time.time(),
        url=None,
    )


def _report_late(obs: Observed, verdict: Verdict) -> None:
    """A check judged after its request was recorded (its version arrived later)."""
    _fire(
        "CHECK", f"{obs.name} (judged late)", time.perf_counter(), 0, CheckFailed(verdict.message)
    )


REGISTRY.on_deferred = _report_late


class GatewayUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)

    def send(self, host: str, name: str, malformed: bool = False) -> None:
        with self.client.get("/", headers={"Host": host}, name=name, catch_response=True) as resp:
            if not resp.status_code:
                return  # no answer at all: Locust records the connection error itself
            obs = Observed(
                name,
                host,
                malformed,
                resp.status_code,
                resp.headers.get("X-Gateway-Config"),
                resp.content or b"",
            )
            verdict = REGISTRY.check(obs)
            if verdict is None or verdict.ok:
                # None: the version is not known yet; judged (and failed if wrong) later.
                resp.success()
            else:
                resp.failure(verdict.message)


def _is_name(host: str) -> bool:
    return not host.startswith("[") and ":" not in host and not host.rpartition(".")[2].isdigit()


def vary(host: str) -> str:
    """Same host, another spelling a client may send: the decision must not change."""
    r = random.random()
    if r < 0.15:
        return host.upper()
    if r < 0.25 and _is_name(host):
        return host + "."
    return host


class LegitUser(GatewayUser):
    weight = 6

    @task
    def browse(self) -> None:
        self.send(vary(REGISTRY.pick()), "legit")


class ScannerUser(GatewayUser):
    weight = 2

    @task
    def scan(self) -> None:
        self.send(scanner_host(), "scanner")


def scanner_host() -> str:
    """A valid Host value, almost always one no version allows (judged per version all the
    same: an allowed name on another port, for instance, must be forwarded)."""
    n = random.randrange(1 << 24)
    r = random.random()
    if r < 0.35:
        return f"scan{n}.example.org"
    if r < 0.5:
        return f"10.{n & 255}.{(n >> 8) & 255}.{n >> 16}"
    if r < 0.6:
        return random.choice(("localhost", "127.0.0.1", "[::1]", "0.0.0.1", "169.254.169.254"))
    base = next((h for h in (REGISTRY.pick(0) for _ in range(5)) if _is_name(h)), "acme.com")
    if r < 0.7:
        return f"{base}.evil.example"
    if r < 0.8:
        return f"x{base}"
    if r < 0.9:
        return f"{base}:{8000 + n % 1000}"
    env = REGISTRY.env(random.choice(REGISTRY.env_names() or [""]))
    if env is not None and env.wildcards:
        return random.choice(sorted(env.wildcards))  # the apex of *.suffix is not covered
    return f"scan{n}.example.net"


# Contract §2: every one of these must be refused with 400, in every mode.
MALFORMED = (
    "", "good.com@evil.com", "good.com:bad", "good.com:", "a b", "good.com/x", "good.com..",
    ".good.com", "[::1]evil", "2130706433", "0x7f.1", "127.1", "1.2.3.4.", "-bad.example",
    "bad-.example", "a" * 64 + ".example", "good.com:0", "good.com:65536", "good.com:123456",
    "[fe80::1%eth0]", "good_com:80:80", "x" * 254, "under.score.com:-1",
)  # fmt: skip


class MalformedUser(GatewayUser):
    weight = 1

    @task
    def malformed(self) -> None:
        self.send(random.choice(MALFORMED), "malformed", malformed=True)


# -- operators --------------------------------------------------------------------------------


class ChangePlan:
    """Which change an operator makes next: add a new host of its own, or remove one it
    added earlier (so removed hosts exist, and users must then see them refused)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0
        self.alive: deque[tuple[str, str]] = deque()

    def next(self, envs: list[str]) -> tuple[str, str, str]:
        if self.alive and (len(self.alive) >= MAX_OWN_HOSTS or random.random() < 0.4):
            env, host = self.alive.popleft()
            return "remove", env, host
        self.n += 1
        env = random.choice(envs)
        host = f"{self.prefix}{self.n}.{env}.example.com"
        self.alive.append((env, host))
        return "add", env, host


def _replace_file(path: Path, data: bytes) -> None:
    # What careful editors and config tools do: never let the gateway read half a file.
    tmp = path.with_name(f".{path.name}.locust.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FileOperator(User):
    """Edits the config file directly, as a person or a GitOps tool would. It takes no
    lock: an edit racing an API write can undo it, as a stale editor buffer would; the
    checks stay exact because every version is judged by its own content."""

    fixed_count = 1
    wait_time = between(*OPERATOR_INTERVAL)

    def on_start(self) -> None:
        self.plan = ChangePlan("file-op")
        if CONFIG_PATH is None:
            log.warning("FileOperator: GW_CONFIG_PATH is not set in this process; it stops")

    @task
    def edit(self) -> None:
        if CONFIG_PATH is None:
            raise StopUser()  # from a task, not on_start: Locust logs that as an error
        t0 = time.perf_counter()
        doc = orjson.loads(CONFIG_PATH.read_bytes())
        action, env_name, host = self.plan.next([e["name"] for e in doc["environments"]])
        env = next(e for e in doc["environments"] if e["name"] == env_name)
        endpoints: list[str] = env.setdefault("secure_endpoints", [])
        if action == "add" and host not in endpoints:
            endpoints.append(host)
        elif action == "remove" and host in endpoints:
            endpoints.remove(host)
        else:
            OPS["file_noop"] += 1  # an API write raced this plan; nothing to change
            return
        # The gateway's own writers format files this way (gateway/store.py).
        raw = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        sha, allowlist = config_version(raw)
        # Registered BEFORE the file exists: no response can name this version first.
        REGISTRY.register(sha, allowlist)
        REGISTRY.note_change(host)
        PRODUCED.add(short(sha))
        _replace_file(CONFIG_PATH, raw)
        OPS["file_changes"] += 1
        _fire("FILE", f"edit: {action} endpoint", t0, len(raw), None)


class ApiOperator(FastHttpUser):
    """Adds and removes endpoints through the admin API (contract §4); a write answers
    once its config serves."""

    fixed_count = 1
    wait_time = between(*OPERATOR_INTERVAL)

    def on_start(self) -> None:
        self.plan = ChangePlan("api-op")
        self.auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        if not ADMIN_URL or not ADMIN_TOKEN:
            log.warning("ApiOperator: GW_ADMIN_URL or GW_ADMIN_TOKEN is not set; it stops")

    @task
    def change(self) -> None:
        if not ADMIN_URL or not ADMIN_TOKEN:
            raise StopUser()
        envs = REGISTRY.env_names()
        if not envs:
            return
        action, env, host = self.plan.next(envs)
        base = f"{ADMIN_URL}/api/v1/environments/{quote(env, safe='')}/endpoints"
        if action == "add":
            req = self.client.post(
                base, json={"host": host}, headers=self.auth,
                name="API add endpoint", catch_response=True,
            )  # fmt: skip
        else:
            req = self.client.delete(
                f"{base}/{quote(host, safe='')}", headers=self.auth,
                name="API remove endpoint", catch_response=True,
            )  # fmt: skip
        with req as resp:
            if resp.status_code == 412:
                # The file changed between the API's read and its rename (the file operator):
                # the API refused to lose that edit. Correct behaviour, not a failure.
                OPS["api_conflicts"] += 1
                resp.success()
                return
            if resp.status_code != 200:
                OPS["api_errors"] += 1
                resp.failure(f"admin API answered {resp.status_code}")
                return
            body = json.loads(resp.content or b"{}")
            resp.success()
        REGISTRY.note_change(host)
        if body.get("changed"):
            OPS["api_changes"] += 1
            PRODUCED.add(short(str(body.get("config_sha256", ""))))
        else:
            OPS["api_noop"] += 1
        _learn_now()


# -- learning versions ------------------------------------------------------------------------


def _learn_now() -> None:
    """Learn the version serving now: from the file when this process can read it (exact
    and cheap), else from the admin API."""
    if CONFIG_FILE is not None:
        CONFIG_FILE.poll(REGISTRY)
    elif ADMIN is not None:
        try:
            ADMIN.fetch(REGISTRY)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not read the versions from the admin API: %s", exc)


def _watch_versions() -> None:
    last_fetch = 0.0
    while True:
        if CONFIG_FILE is not None:
            CONFIG_FILE.poll(REGISTRY)
        # Checks still waiting after the file had its chance: ask the gateway what serves
        # (at most twice a second: with 100,000 entries the answer is megabytes).
        now = time.monotonic()
        if ADMIN is not None and REGISTRY.pending and now - last_fetch > 0.5:
            last_fetch = now
            try:
                ADMIN.fetch(REGISTRY)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("could not read the versions from the admin API: %s", exc)
        gevent.sleep(0.05)


def _load_first_version() -> None:
    if CONFIG_PATH is not None:
        sha, allowlist = config_version(CONFIG_PATH.read_bytes())
        REGISTRY.register(sha, allowlist)
    elif ADMIN is not None:
        ADMIN.fetch(REGISTRY)
    else:
        raise SystemExit("set GW_CONFIG_PATH or GW_ADMIN_URL (see bench/locustfile.py)")
    assert REGISTRY.latest is not None
    log.info(
        "config version known: %d entries in %d environments, %d hosts to try",
        REGISTRY.latest.entry_count,
        len(REGISTRY.latest.envs),
        len(REGISTRY.pool),
    )


@events.init.add_listener
def _on_init(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the master runs no users: nothing to check
    _load_first_version()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    global _watcher
    if not isinstance(environment.runner, MasterRunner) and _watcher is None:
        _watcher = gevent.spawn(_watch_versions)


def local_report() -> dict[str, Any]:
    return {
        **REGISTRY.tally.to_json(),
        "operators": dict(OPS),
        "versions_produced": len(PRODUCED),
        "versions_produced_seen": len(PRODUCED & REGISTRY.tally.versions_seen),
        "versions_known": len(REGISTRY.versions),
        "hosts_in_pool": len(REGISTRY.pool),
    }


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    global _watcher
    if isinstance(environment.runner, MasterRunner):
        return
    if _watcher is not None:
        _watcher.kill()
        _watcher = None
    _learn_now()
    if REGISTRY.pending and ADMIN is not None and CONFIG_FILE is not None:
        # The file moved on past a version some response named; it may still serve.
        with contextlib.suppress(OSError, ValueError, KeyError):
            ADMIN.fetch(REGISTRY)
    REGISTRY.finish()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_kw: Any) -> None:
    """The report, with Locust's own final totals: its CSV is rewritten once a second and
    not at exit, so it misses the last second."""
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        role, checks = "master", _merge(list(_worker_totals.values()))
    else:
        role = "worker" if isinstance(runner, WorkerRunner) else "local"
        checks = local_report()
    if role == "worker":
        _write_report(checks, role)  # a worker's request stats live on the master
        return
    total = environment.stats.total
    checks["locust"] = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": round(total.total_rps, 1),
        "median_ms": total.median_response_time,
        "p99_ms": total.get_response_time_percentile(0.99),
        "max_ms": round(total.max_response_time or 0, 1),
        "by_name": {
            f"{method} {name}": {"requests": e.num_requests, "failures": e.num_failures}
            for (name, method), e in sorted(environment.stats.entries.items())
        },
    }
    _write_report(checks, role)


def _write_report(report: dict[str, Any], role: str) -> None:
    report = {"role": role, **report}
    log.info(
        "decision checks (%s): %d checked, %d wrong decisions, %d wrong forwards, "
        "%d unverified; operator changes %s",
        role,
        report.get("checks", 0),
        report.get("wrong_decisions", 0),
        report.get("wrong_forwards", 0),
        report.get("unverified", 0),
        report.get("operators", {}),
    )
    if REPORT_PATH:
        Path(REPORT_PATH).write_text(json.dumps(report, indent=2) + "\n")


# -- distributed mode: workers send their counts to the master ---------------------------------


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    data["gateway_checks"] = local_report()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    if "gateway_checks" in data:
        _worker_totals[client_id] = data["gateway_checks"]  # cumulative: keep the last


def _merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the workers' counts; counts of distinct versions and hosts overlap between
    workers, so their largest is kept. Examples: the first few of each worker."""
    out: dict[str, Any] = {"workers": len(reports), "examples": [], "operators": Counter()}
    for rep in reports:
        for key, value in rep.items():
            if not isinstance(value, int):
                continue
            if key.startswith("versions_") or key == "hosts_in_pool":
                out[key] = max(out.get(key, 0), value)
            else:
                out[key] = out.get(key, 0) + value
        out["examples"] += rep.get("examples", [])[:5]
        out["operators"].update(rep.get("operators", {}))
    out["operators"] = dict(out["operators"])
    return out
