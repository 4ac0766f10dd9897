"""The config file: its schema, and validation with errors that name their JSON path.

The file is the single source of truth (contract §1). Parsing and the structure are
msgspec's (unknown keys refused everywhere, so a typo never silently disables a setting;
a key given twice in one object is refused too, see ``jsondoc``); the meaning (hosts,
references between sections) is checked here and every problem is reported with its
path, e.g. ``environments[0].secure_endpoints[3]: ...``. Nothing here does I/O beyond
``load_file``; compiling into a decision snapshot is ``policy.compile_config``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import msgspec

from gateway import hosts, jsondoc
from gateway.steps import Steps, drive

Enforcement = Literal["enforce", "report", "off"]
BlockedStatus = Literal[503, 421, 403, 404, "close"]
Management = Literal["file", "external"]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
# A config larger than this is refused before parsing: a 50 MB accident must not take the
# worker's memory, and 100,000 entries fit in a few MB.
MAX_CONFIG_BYTES = 32 * 1024 * 1024


class ConfigError(Exception):
    """The file cannot be used. ``errors`` holds every problem found, each with its path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Frozen, keyword-only, and unknown keys are errors."""


class BlockedResponse(_Struct, frozen=True):
    status: BlockedStatus = 503
    body: str | None = None


class Limits(_Struct, frozen=True):
    # nginx's client_max_body_size is 1 MiB; the product fronts whole web apps with
    # uploads, so the contract's example 10 MiB is the default, inclusive.
    max_body_bytes: int | None = None


class Timeouts(_Struct, frozen=True):
    connect_s: float | None = None
    read_s: float | None = None


class ServerLimits(_Struct, frozen=True):
    """Top-level limits: per-environment defaults plus the connection-level caps."""

    max_body_bytes: int = 10 * 1024 * 1024
    # Header caps: aiohttp's defaults (8190 bytes a line, like nginx's 8k buffers).
    max_header_bytes: int = 8190
    max_headers: int = 128
    max_connections: int = 10000


class ServerTimeouts(_Struct, frozen=True):
    connect_s: float = 5.0
    read_s: float = 60.0
    # Time allowed to receive a request's headers (nginx client_header_timeout 60 s is
    # lenient; 10 s stops slowloris while real browsers finish in milliseconds).
    header_s: float = 10.0
    keepalive_s: float = 75.0  # nginx keepalive_timeout default
    websocket_idle_s: float = 300.0


class TLS(_Struct, frozen=True):
    cert: str
    key: str


class Environment(_Struct, frozen=True):
    name: str
    hostname: str
    upstreams: list[str]
    secure_endpoints: list[str] = []
    candidate_endpoints: list[str] | None = None
    enforcement: Enforcement = "enforce"
    locked: bool = False
    blocked_response: BlockedResponse | None = None
    limits: Limits | None = None
    timeouts: Timeouts | None = None


class Listener(_Struct, frozen=True):
    name: str
    bind: str
    environments: list[str]
    default_environment: str | None = None
    tls: TLS | None = None
    health_path: str | None = None
    proxy_protocol: bool = False


class Config(_Struct, frozen=True):
    environments: list[Environment]
    listeners: list[Listener] | None = None
    trusted_proxies: list[str] = []
    blocked_response: BlockedResponse = BlockedResponse()
    limits: ServerLimits = ServerLimits()
    timeouts: ServerTimeouts = ServerTimeouts()
    management: Management = "file"
    expose_config_version: bool = False
    # Extra names the admin API answers to besides localhost, loopback and its bind
    # address (contract §4, against DNS rebinding).
    admin_hostnames: list[str] = []


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Bind:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config with what was derived while checking it."""

    config: Config
    sha256: str
    raw: bytes
    # Per environment: parsed hostname, live entries, candidate entries (None: no list).
    hostnames: dict[str, hosts.Entry]
    entries: dict[str, hosts.EntryList]
    candidates: dict[str, hosts.EntryList | None]
    upstreams: dict[str, tuple[Upstream, ...]]
    binds: dict[str, Bind]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    notes: tuple[str, ...]  # normalisation notes for lint, each with its path
    # Canonical texts of each environment's entries (not its hostname), for overlap
    # checks by set intersection.
    entry_texts: dict[str, frozenset[str]]

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]


def schema() -> dict[str, Any]:
    """The config file's JSON Schema (no additional properties anywhere)."""
    result: dict[str, Any] = msgspec.json.schema(Config)
    result["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    result["title"] = "secure-endpoints gateway config"
    return result


def parse_bind(value: str) -> Bind:
    """``host:port`` or ``[v6]:port``; raises ValueError with a readable message."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not [IPv6]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not host:port")
        if host != "localhost":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{value!r}: bind to an IP address or localhost") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port must be 0-65535")
    return Bind(host, int(port))


def parse_upstream(value: str) -> Upstream:
    m = re.fullmatch(r"(https?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?/?", value)
    if not m:
        raise ValueError(f"{value!r} is not http(s)://host[:port]")
    scheme, host, port = m.group(1), m.group(2), m.group(3)
    port_n = int(port) if port else (443 if scheme == "https" else 80)
    if not 1 <= port_n <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return Upstream(f"{scheme}://{host}:{port_n}", scheme, host.strip("[]"), port_n)


def load_bytes(raw: bytes, previous: LoadedConfig | None = None) -> LoadedConfig:
    """Parse and validate a config file's bytes. Raises ConfigError listing every problem.

    With ``previous`` (the config in force), an environment whose list is unchanged keeps
    its parsed entries: a reload that edits one environment re-validates one list.
    """
    return drive(load_steps(raw, previous))


def load_steps(
    raw: bytes, previous: LoadedConfig | None = None, sha256: str | None = None
) -> Steps[LoadedConfig]:
    """``load_bytes`` as bounded steps (see gateway/steps.py), for reloads on the loop.
    ``sha256``: the bytes' hash when the caller has it (hashed off the loop)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"file is larger than the limit of {MAX_CONFIG_BYTES} bytes"])
    if not raw.strip():
        raise ConfigError(["file is empty"])
    # One pass from bytes to typed structs: the longest single step of a reload (the loop
    # cannot be given back inside it), about 6 ms for 100,000 entries against 9 ms for
    # orjson and a conversion. orjson words syntax errors better, so it reports those.
    # The check for repeated keys (msgspec lets the last one win) is a step of its own,
    # about 2.5 ms at that size (the allowlists' strings skipped), and comes first: the
    # step after a long one runs before the loop serves what waited, so right after the
    # decode it would lengthen the longest stall of a reload by its own length.
    try:
        check_unique_keys(raw)
    except jsondoc.JSONDocError as exc:
        raise ConfigError([str(exc)]) from None
    yield
    try:
        config = msgspec.json.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError([_msgspec_message(str(exc))]) from None
    except msgspec.DecodeError:
        raise ConfigError([jsondoc.syntax_error(raw)]) from None
    yield
    sha = sha256 if sha256 is not None else hashlib.sha256(raw).hexdigest()
    return (yield from _validate(config, raw, sha, previous))


class _ListsOnly(msgspec.Struct):
    secure_endpoints: msgspec.Raw = msgspec.Raw(b"")
    candidate_endpoints: msgspec.Raw = msgspec.Raw(b"")


class _EnvironmentsOnly(msgspec.Struct):
    environments: list[_ListsOnly] = []


def _allowlist_texts(raw: bytes) -> list[bytes]:
    """The allowlists' JSON texts in file order, cut out without making their strings
    (msgspec.Raw: about 2 ms for 100,000 entries), for the repeated-key check to skip.
    Where a key is repeated, msgspec keeps the last, and the other stays in and is
    checked; a text that is not a list of strings is not skipped."""
    doc = msgspec.json.decode(raw, type=_EnvironmentsOnly)
    return [
        bytes(text)
        for env in doc.environments
        for text in (env.secure_endpoints, env.candidate_endpoints)
    ]


def check_unique_keys(raw: bytes) -> None:
    """jsondoc.check_unique_keys for a config file, its allowlists skipped. A file that is
    not JSON, or not shaped like a config, has nothing checked here: the typed decode
    says what is wrong with it."""
    try:
        texts = _allowlist_texts(raw)
    except msgspec.DecodeError:
        return
    jsondoc.check_unique_keys(raw, texts)


def load_file(path: str) -> LoadedConfig:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    return load_bytes(raw)


def _msgspec_message(text: str) -> str:
    # msgspec says "Expected `str`, got `int` - at `$.environments[0].hostname`";
    # operators read paths first, as in every other error we print.
    msg, sep, where = text.rpartition(" - at `")
    if not sep:
        return "(top level): " + text.replace("`", "")
    path = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    return f"{path}: {msg.replace('`', '')}"


class _Reuse:
    """What a reload can take from the config in force: an environment whose list is the
    same list as before keeps its parsed entries (one list comparison, in C, instead of
    validating 20,000 entries again)."""

    def __init__(self, previous: LoadedConfig | None) -> None:
        self.previous = previous
        self.lists: dict[str, list[str]] = {}
        if previous is not None:
            self.lists = {e.name: e.secure_endpoints for e in previous.config.environments}

    def same_list(self, env: Environment) -> tuple[hosts.EntryList, frozenset[str]] | None:
        prev = self.previous
        if prev is None or self.lists.get(env.name) != env.secure_endpoints:
            return None
        return prev.entries[env.name], prev.entry_texts[env.name]

    def known_plain(self, name: str) -> frozenset[str]:
        """The plain names environment ``name`` allows now (already validated)."""
        prev = self.previous
        if prev is None or name not in prev.entries:
            return frozenset()
        texts, special = prev.entry_texts[name], prev.entries[name].special
        return texts - special.keys() if special else texts


def _validate(
    config: Config, raw: bytes, sha: str, previous: LoadedConfig | None
) -> Steps[LoadedConfig]:
    reuse = _Reuse(previous)
    errors: list[str] = []
    notes: list[str] = []
    texts: dict[str, frozenset[str]] = {}
    hostnames: dict[str, hosts.Entry] = {}
    entries: dict[str, hosts.EntryList] = {}
    candidates: dict[str, hosts.EntryList | None] = {}
    upstreams: dict[str, tuple[Upstream, ...]] = {}

    if not config.environments:
        errors.append("environments: at least one environment is required")
    for i, env in enumerate(config.environments):
        where = f"environments[{i}]"
        if not NAME_RE.match(env.name):
            errors.append(f"{where}.name: {env.name!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
        elif env.name in hostnames or env.name in entries:
            errors.append(f"{where}.name: duplicate environment name {env.name!r}")
            continue
        try:
            hostnames[env.name] = hosts.parse_hostname(env.hostname)
        except hosts.HostError as exc:
            errors.append(f"{where}.hostname: {exc}")
        same = reuse.same_list(env)
        if same is not None:
            entries[env.name], texts[env.name] = same
        else:
            entries[env.name], texts[env.name] = yield from _entries(
                env.secure_endpoints,
                f"{where}.secure_endpoints",
                errors,
                notes,
                reuse.known_plain(env.name),
            )
        if env.candidate_endpoints is not None:
            candidates[env.name], _ = yield from _entries(
                env.candidate_endpoints, f"{where}.candidate_endpoints", errors, notes
            )
        else:
            candidates[env.name] = None
        if not env.upstreams:
            errors.append(f"{where}.upstreams: at least one upstream is required")
        ups = []
        for j, url in enumerate(env.upstreams):
            try:
                ups.append(parse_upstream(url))
            except ValueError as exc:
                errors.append(f"{where}.upstreams[{j}]: {exc}")
        upstreams[env.name] = tuple(ups)
        _check_limits(env.limits, env.timeouts, where, errors)
        if env.blocked_response is not None:
            _check_blocked(env.blocked_response, f"{where}.blocked_response", errors)
    _check_blocked(config.blocked_response, "blocked_response", errors)
    _check_server_limits(config, errors)

    binds: dict[str, Bind] = {}
    for i, lst in enumerate(config.listeners or ()):
        where = f"listeners[{i}]"
        if not NAME_RE.match(lst.name):
            errors.append(f"{where}.name: {lst.name!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
        if lst.name in binds:
            errors.append(f"{where}.name: duplicate listener name {lst.name!r}")
        try:
            bind = parse_bind(lst.bind)
        except ValueError as exc:
            errors.append(f"{where}.bind: {exc}")
        else:
            # Port 0 asks the kernel for a free port: several such binds do not collide.
            if bind.port != 0 and bind in binds.values():
                errors.append(f"{where}.bind: {lst.bind} is already used by another listener")
            binds[lst.name] = bind
        if not lst.environments:
            errors.append(f"{where}.environments: a listener serves at least one environment")
        for j, name in enumerate(lst.environments):
            if name not in entries:
                errors.append(f"{where}.environments[{j}]: unknown environment {name!r}")
        if len(set(lst.environments)) != len(lst.environments):
            errors.append(f"{where}.environments: an environment is listed twice")
        if lst.default_environment is not None and lst.default_environment not in lst.environments:
            errors.append(
                f"{where}.default_environment: {lst.default_environment!r} is not one of "
                "this listener's environments"
            )
        if lst.health_path is not None and not re.fullmatch(r"/[!-~]*", lst.health_path):
            errors.append(f"{where}.health_path: must be an absolute path like /healthz")

    proxies = []
    for i, cidr in enumerate(config.trusted_proxies):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as exc:
            errors.append(f"trusted_proxies[{i}]: {exc}")
    for i, name in enumerate(config.admin_hostnames):
        try:
            hosts.parse_hostname(name)
        except hosts.HostError as exc:
            errors.append(f"admin_hostnames[{i}]: {exc}")

    if errors:
        raise ConfigError(errors)
    yield
    yield from _check_listener_overlaps(config, hostnames, texts, errors)
    if errors:
        raise ConfigError(errors)
    return LoadedConfig(
        config=config,
        sha256=sha,
        raw=raw,
        hostnames=hostnames,
        entries=entries,
        candidates=candidates,
        upstreams=upstreams,
        binds=binds,
        trusted_proxies=tuple(proxies),
        notes=tuple(notes),
        entry_texts=texts,
    )


# Entries checked between two yields to the loop: about 0.3 ms of regex matching.
ENTRY_CHUNK = 500


def _entries(
    values: list[str],
    where: str,
    errors: list[str],
    notes: list[str],
    known: frozenset[str] = frozenset(),
) -> Steps[tuple[hosts.EntryList, frozenset[str]]]:
    # Nearly every entry of a large list is a plain canonical name: check those in C,
    # chunk by chunk, and parse only the others (wildcards, IPs, IDNs, mistakes) one by one.
    # ``known`` holds plain names the config in force already accepted: a set lookup is
    # ten times cheaper than the regex, and a usual reload changes a handful of names.
    odd: list[int] = []
    match = hosts.PLAIN_ENTRY_RE.fullmatch
    for start in range(0, len(values), ENTRY_CHUNK):
        chunk = values[start : start + ENTRY_CHUNK]
        span = range(start, start + len(chunk))
        if known:
            new = list(itertools.compress(span, map(operator.not_, map(known.__contains__, chunk))))
            odd.extend(k for k in new if match(values[k]) is None)
        else:
            odd.extend(itertools.compress(span, map(operator.not_, map(match, chunk))))
        yield
    texts: list[str | None] = list(values)
    special: dict[str, hosts.Entry] = {}
    for n, k in enumerate(odd, 1):
        try:
            entry = hosts.parse_entry(values[k])
        except hosts.HostError as exc:
            errors.append(f"{where}[{k}]: {exc}")
            texts[k] = None
            continue
        for note in entry.notes:
            notes.append(f"{where}[{k}]: {note}")
        texts[k] = entry.text
        hosts.EntryList.keep_special(special, entry)
        if n % (ENTRY_CHUNK // 8) == 0:
            yield
    unique = frozenset(texts)
    if len(unique) == len(texts) and None not in unique:  # the usual case: no error, no duplicate
        done = cast(list[str], texts)
        return hosts.EntryList(done, special), cast(frozenset[str], unique)
    out: list[str] = []
    seen: set[str] = set()
    for k, text in enumerate(texts):
        if text is None:
            continue
        if text in seen:
            notes.append(f"{where}[{k}]: {text!r} is listed more than once")
            continue
        seen.add(text)
        out.append(text)
    return hosts.EntryList(out, special), frozenset(seen)


def _check_blocked(resp: BlockedResponse, where: str, errors: list[str]) -> None:
    if resp.body is not None and len(resp.body) > 64 * 1024:
        errors.append(f"{where}.body: at most 65536 characters")


def _check_limits(
    limits: Limits | None, timeouts: Timeouts | None, where: str, errors: list[str]
) -> None:
    if limits is not None and limits.max_body_bytes is not None and limits.max_body_bytes < 0:
        errors.append(f"{where}.limits.max_body_bytes: must be >= 0")
    if timeouts is not None:
        for field in ("connect_s", "read_s"):
            value = getattr(timeouts, field)
            if value is not None and not 0 < value <= 3600:
                errors.append(f"{where}.timeouts.{field}: must be > 0 and <= 3600")


def _check_server_limits(config: Config, errors: list[str]) -> None:
    lim, tmo = config.limits, config.timeouts
    if lim.max_body_bytes < 0:
        errors.append("limits.max_body_bytes: must be >= 0")
    if not 256 <= lim.max_header_bytes <= 1024 * 1024:
        errors.append("limits.max_header_bytes: must be 256..1048576")
    if not 8 <= lim.max_headers <= 10000:
        errors.append("limits.max_headers: must be 8..10000")
    if lim.max_connections < 1:
        errors.append("limits.max_connections: must be >= 1")
    for field in ("connect_s", "read_s", "header_s", "keepalive_s", "websocket_idle_s"):
        if not 0 < getattr(tmo, field) <= 3600:
            errors.append(f"timeouts.{field}: must be > 0 and <= 3600")


def _check_listener_overlaps(
    config: Config,
    hostnames: dict[str, hosts.Entry],
    texts: dict[str, frozenset[str]],
    errors: list[str],
) -> Steps[None]:
    """The same entry (same host, same port) in two environments of one listener is an
    error: which environment would get the request is not something to leave to order.
    Checked by set intersection, one pair of environments per step, so 100,000 entries
    cost no Python loop."""
    for i, lst in enumerate(listeners_of(config)):
        names = lst.environments
        for a_i, a in enumerate(names):
            for b in names[a_i + 1 :]:
                ta, tb = texts[a], texts[b]
                common = set(ta & tb)
                ha, hb = hostnames[a].text, hostnames[b].text
                if ha == hb or ha in tb:
                    common.add(ha)
                if hb in ta:
                    common.add(hb)
                for text in sorted(common)[:20]:
                    where = f"listeners[{i}]" if config.listeners else "environments"
                    errors.append(f"{where}: {text!r} is claimed by both {a!r} and {b!r}")
                yield


def listeners_of(config: Config, listen: str = "0.0.0.0:8080") -> list[Listener]:
    """The listeners in force: the configured ones, or the implicit ``default`` one."""
    if config.listeners is not None:
        return list(config.listeners)
    names = [e.name for e in config.environments]
    return [
        Listener(
            name="default",
            bind=listen,
            environments=names,
            default_environment=names[0] if len(names) == 1 else None,
        )
    ]
