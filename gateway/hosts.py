"""Host values and allowlist entries: validation and normalisation.

Contract §2 steps 2-4 (Host header, absolute-form authority) and §1 "Environments"
(`secure_endpoints`, `candidate_endpoints`, `hostname`). Sans-IO like h11: str or bytes
in, frozen values out; no aiohttp, sockets or clocks, so everything here is tested with
plain calls and fuzzed with Hypothesis.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Final, Literal, overload

import idna

__all__ = [
    "Authority",
    "Entry",
    "EntryKind",
    "EntryList",
    "HostError",
    "InvalidEntry",
    "Kind",
    "MalformedHost",
    "is_public_suffix_wildcard",
    "parse_absolute_authority",
    "parse_entry",
    "parse_host",
    "parse_hostname",
    "plain_entry",
    "split_wildcard_suffixes",
    "wildcard_candidates",
]


class HostError(ValueError):
    """Base of this layer's errors. `reason` is the metric reason string."""

    reason: ClassVar[str] = "malformed_host"


class MalformedHost(HostError):
    """A Host value or request-target authority that is not a valid authority (400)."""

    reason: ClassVar[str] = "malformed_host"


class InvalidEntry(HostError):
    """A config entry (endpoint or hostname) that cannot be used; names the entry, not its path."""

    reason: ClassVar[str] = "invalid_entry"


Kind = Literal["name", "ipv4", "ipv6"]
EntryKind = Literal["name", "ipv4", "ipv6", "wildcard"]


@dataclass(frozen=True, slots=True)
class Authority:
    """A normalised Host: lowercase, one trailing dot dropped, IPv6 as "[rfc5952]"."""

    host: str
    port: int | None
    kind: Kind


@dataclass(frozen=True, slots=True)
class Entry:
    """A normalised allowlist entry; `text` is its canonical written form."""

    kind: EntryKind
    host: str
    port: int | None
    text: str
    notes: tuple[str, ...] = ()


# --- Host grammar ----------------------------------------------------------------------

_MAX_NAME: Final = 253  # RFC 1035 §2.3.4, in presentation form without the root dot
# Longest acceptable value: a 253-char name, its trailing dot and ":65535". Checked first so
# that no regex ever runs over an attacker's megabyte.
_MAX_VALUE: Final = _MAX_NAME + 1 + 6

# Underscore is allowed (contract §2): real hostnames carry it (Windows/AD hosts, some
# generated cloud names) and nginx's ngx_http_validate_host() accepts it.
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# One C-level match does labels, the single optional trailing dot and the port; no
# re.IGNORECASE, which would let U+212A KELVIN SIGN match `k`.
_NAME_PORT_RE: Final = re.compile(rf"({_LABEL}(?:\.{_LABEL})*)(\.?)(?::([0-9]{{1,5}}))?")
_NUMERIC_LABEL_RE: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE: Final = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")
_PORT_RE: Final = re.compile(r":([0-9]{1,5})")
_IPV6_HEX_RE: Final = re.compile(r"[0-9A-Fa-f:]{2,39}")
_IPV6_MIXED_RE: Final = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_DIGITS: Final = frozenset("0123456789")
_CONTROL_OR_SPACE: Final = frozenset(map(chr, [*range(0x21), 0x7F]))
_LABEL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_SHOW_MAX: Final = 64


class _Bad(Exception):
    """Internal: why a value failed the grammar; the public error adds the value."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _show(value: str | bytes) -> str:
    # Host values are attacker input that ends up in logs: ascii() escapes CR/LF, controls
    # and bidi overrides, and the cut keeps one log line bounded.
    if len(value) <= _SHOW_MAX:
        return ascii(value)
    return ascii(value[:_SHOW_MAX]) + f"... ({len(value)} chars)"


def parse_host(value: str | bytes) -> Authority:
    """Validate and normalise a Host header value (contract §2 steps 2-3)."""
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedHost(f"non-ASCII byte in {_show(value)}") from None
    else:
        text = value
    try:
        return _authority(text)
    except _Bad as exc:
        raise MalformedHost(f"{exc.why}: {_show(value)}") from None


_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def parse_absolute_authority(authority: str | bytes, scheme: str) -> Authority:
    """Parse an absolute-form target's authority; the scheme's default port becomes None.

    An unknown scheme keeps its port: there is no default to drop.
    """
    parsed = parse_host(authority)
    if parsed.port is not None and parsed.port == _DEFAULT_PORTS.get(scheme.lower()):
        return Authority(parsed.host, None, parsed.kind)
    return parsed


def _authority(value: str) -> Authority:
    if not value:
        raise _Bad("empty host")
    if len(value) > _MAX_VALUE:
        raise _Bad(f"longer than {_MAX_VALUE} characters")
    if value[0] == "[":
        return _bracketed(value)
    m = _NAME_PORT_RE.fullmatch(value)
    if m is None:
        raise _Bad(_why_not_name(value))
    host, dot, port_text = m.groups()
    if len(host) > _MAX_NAME:
        raise _Bad(f"name longer than {_MAX_NAME} characters")
    host = host.lower()
    port = None if port_text is None else _port(port_text)
    last = host[host.rfind(".") + 1 :]
    if last[0] in _DIGITS and _NUMERIC_LABEL_RE.fullmatch(last):
        # A name ending in a number is an IPv4 address to browsers (WHATWG URL host parser,
        # "ends in a number") and to inet_aton, which also reads `2130706433`, `0x7f.1`
        # and `127.1` as 127.0.0.1 and `010.0.0.1` as octal 8.0.0.1. Accepting only the
        # canonical dotted quad leaves one spelling per address, so what the allowlist
        # says is what the client, the upstream and any resolver all mean.
        if dot:
            raise _Bad("IPv4 address with a trailing dot")
        if _IPV4_RE.fullmatch(host) is None:
            raise _Bad("numeric name that is not a canonical dotted-quad IPv4 address")
        return Authority(host, port, "ipv4")
    return Authority(host, port, "name")


def _port(text: str) -> int:
    port = int(text)
    if port == 0 or port > 65535:
        raise _Bad("port out of range 1-65535")
    return port


def _bracketed(value: str) -> Authority:
    end = value.find("]")
    if end < 0:
        raise _Bad("'[' without ']'")
    inner = value[1:end]
    if "%" in inner:
        # An RFC 6874 zone id names an interface of the sender and means nothing here;
        # RFC 3986's IP-literal has none and the WHATWG URL parser refuses `%` in hosts.
        raise _Bad("IPv6 zone id not allowed")
    canonical = _ipv6_canonical(inner)
    if canonical is None:
        raise _Bad("invalid IPv6 literal")
    port = None
    if end + 1 < len(value):
        m = _PORT_RE.fullmatch(value, end + 1)
        if m is None:
            raise _Bad("after ']' only ':port' (1-5 digits) may follow")
        port = _port(m.group(1))
    return Authority(f"[{canonical}]", port, "ipv6")


# IPv6 Hosts are few in practice (a server's own few addresses), and ipaddress costs
# ~9 us per literal here (IPv6Address() plus .compressed). A bounded cache, as yarl's
# lru_cache around its host encoding, makes a repeat ~0.1 us; an attacker cycling literals
# only churns 256 slots and pays the hand parser below on each miss.
@lru_cache(maxsize=256)
def _ipv6_canonical(inner: str) -> str | None:
    """RFC 5952 text of an IPv6 literal (no brackets), or None when it is not one."""
    if _IPV6_HEX_RE.fullmatch(inner) is None:
        # Embedded dotted IPv4 (`::ffff:1.2.3.4`, `64:ff9b::1.2.3.4`): rare; ipaddress.
        if _IPV6_MIXED_RE.fullmatch(inner) is None or "." not in inner:
            return None
        try:
            number = int(ipaddress.IPv6Address(inner))
        except ValueError:
            return None
        return _format_ipv6([f"{(number >> s) & 0xFFFF:x}" for s in range(112, -1, -16)])
    inner = inner.lower()
    gap = inner.find("::")
    if gap < 0:
        parts = inner.split(":")
        if len(parts) != 8:
            return None
    else:
        if inner.find("::", gap + 1) >= 0:
            return None
        head = inner[:gap].split(":") if gap else []
        tail = inner[gap + 2 :].split(":") if gap + 2 < len(inner) else []
        missing = 8 - len(head) - len(tail)
        if missing < 1:
            return None
        parts = [*head, *(["0"] * missing), *tail]
    groups: list[str] = []
    for part in parts:
        if not 0 < len(part) < 5:
            return None
        groups.append(part.lstrip("0") or "0")
    return _format_ipv6(groups)


# `:0:0:...:` runs, longest first: str.find on each returns the leftmost longest run.
_ZERO_RUNS: Final = tuple(":" + "0:" * n for n in range(8, 1, -1))


def _format_ipv6(groups: list[str]) -> str:
    """RFC 5952 text from 8 lowercase hex groups without leading zeros."""
    if groups[5] == "ffff" and groups[:5] == ["0", "0", "0", "0", "0"]:
        # RFC 5952 §5: IPv4-mapped addresses are written with the dotted quad. Done by
        # hand because ipaddress only does so from Python 3.13 on (3.11 prints
        # `::ffff:102:304`).
        hi, lo = int(groups[6], 16), int(groups[7], 16)
        return f"::ffff:{hi >> 8}.{hi & 255}.{lo >> 8}.{lo & 255}"
    # RFC 5952 §4.2: `::` replaces the longest run of zero groups, the first on a tie, and
    # never a single group.
    text = ":" + ":".join(groups) + ":"
    for run in _ZERO_RUNS:
        at = text.find(run)
        if at >= 0:
            return text[1:at] + "::" + text[at + len(run) : -1]
    return text[1:-1]


def _why_not_name(value: str) -> str:
    """Explain a value that failed the name grammar (error path only)."""
    if not value.isascii():
        return "non-ASCII character"
    if any(c in _CONTROL_OR_SPACE for c in value):
        return "control character or space"
    if "@" in value:
        return "'@' (userinfo) not allowed"
    if any(c in "/?#\\" for c in value):
        return "path, query or fragment not allowed"
    if "%" in value:
        return "percent-encoding not allowed"
    host = value
    if ":" in value:
        if value.count(":") > 1:
            return "more than one ':' (an IPv6 literal must be in brackets)"
        host, _, port = value.partition(":")
        if not port:
            return "empty port"
        if not (port.isdigit() and len(port) <= 5):
            return "port must be 1-5 digits"
    if not host:
        return "empty host"
    if host.endswith("."):
        host = host[:-1]
    for label in host.split("."):
        if not label:
            return "empty label"
        bad = next((c for c in label if c not in _LABEL_CHARS), None)
        if bad is not None:
            return f"invalid character {bad!r}"
        if len(label) > 63:
            return "label longer than 63 characters"
        if label[0] == "-" or label[-1] == "-":
            return "label starts or ends with '-'"
    return "invalid host"


# --- Wildcard lookup -------------------------------------------------------------------


def wildcard_candidates(host: str) -> list[str]:
    """Proper suffixes of a normalised name, longest first: "a.b.c" -> ["b.c", "c"]."""
    out: list[str] = []
    i = host.find(".")
    while i >= 0:
        out.append(host[i + 1 :])
        i = host.find(".", i + 1)
    return out


def split_wildcard_suffixes(host: str) -> Iterator[str]:
    """Lazy form of `wildcard_candidates`, for a loop that stops at the first hit."""
    i = host.find(".")
    while i >= 0:
        yield host[i + 1 :]
        i = host.find(".", i + 1)


# --- Config entries --------------------------------------------------------------------

_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_LOWER_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_CHARS_RE: Final = re.compile(r"[A-Za-z0-9_.:*\[\]-]+")
_PORT: Final = (  # 1-65535, no leading zero
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)
# An entry already in canonical form and needing nothing but this match: a lowercase name
# (last label not numeric, so never an IPv4 look-alike; no A-label, which idna must check;
# at most 253 characters), optionally ":port" (1-65535, no leading zero). Such a value is
# its own canonical text, so config validation checks whole lists with this regex from C
# (``map``) and builds no Entry object for them.
PLAIN_ENTRY_RE: Final = re.compile(
    rf"(?![^:]*xn--)(?=[^:]{{1,{_MAX_NAME}}}(?::|\Z))"
    rf"(?:{_LOWER_LABEL}\.)*[a-z_](?:[a-z0-9_-]{{0,61}}[a-z0-9_])?(?::{_PORT})?"
)


def plain_entry(text: str) -> Entry:
    """The Entry of a value PLAIN_ENTRY_RE accepts (not checked again here)."""
    host, sep, port = text.partition(":")
    return Entry("name", host, int(port) if sep else None, text)


class EntryList(Sequence[Entry]):
    """An allowlist's entries in file order, kept as their canonical texts.

    A plain name is its own parse, so a 100,000-entry list holds 100,000 strings rather
    than 100,000 Entry objects (which cost a reload 0.3 s to build and the event loop
    20 ms to free); wildcards, IP literals, A-labels and normalised values keep their
    parsed Entry in ``special``, keyed by canonical text. Entries are made on access.
    """

    __slots__ = ("special", "texts")

    def __init__(self, texts: Sequence[str] = (), special: Mapping[str, Entry] | None = None):
        self.texts: tuple[str, ...] = tuple(texts)
        self.special: Mapping[str, Entry] = special if special is not None else {}

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> EntryList:
        listed = list(entries)
        special: dict[str, Entry] = {}
        for e in listed:
            EntryList.keep_special(special, e)
        return cls([e.text for e in listed], special)

    @staticmethod
    def keep_special(special: dict[str, Entry], entry: Entry) -> None:
        """Record ``entry`` in ``special`` unless its text alone rebuilds it (a plain
        name) or an entry with that text is there already; notes are not kept."""
        if entry.text in special:
            return
        if entry.kind == "name" and PLAIN_ENTRY_RE.fullmatch(entry.text) is not None:
            return
        special[entry.text] = Entry(entry.kind, entry.host, entry.port, entry.text)

    def _entry(self, text: str) -> Entry:
        got = self.special.get(text)
        return got if got is not None else plain_entry(text)

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> EntryList: ...
    def __getitem__(self, index: int | slice) -> Entry | EntryList:
        if isinstance(index, slice):
            texts = self.texts[index]
            return EntryList(texts, {t: self.special[t] for t in texts if t in self.special})
        return self._entry(self.texts[index])

    def __iter__(self) -> Iterator[Entry]:
        return map(self._entry, self.texts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntryList):
            return self.texts == other.texts and list(self) == list(other)
        if isinstance(other, tuple | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EntryList({len(self.texts)} entries, {len(self.special)} special)"

    def split(self) -> tuple[list[str], list[str], list[Entry]]:
        """(plain names without port, plain ``name:port`` texts, special entries), in bulk."""
        special = self.special
        plain = [t for t in self.texts if t not in special] if special else list(self.texts)
        if ":" in "\n".join(plain):
            return (
                [t for t in plain if ":" not in t],
                [t for t in plain if ":" in t],
                list(special.values()),
            )
        return plain, [], list(special.values())


def parse_entry(value: str) -> Entry:
    """Parse a `secure_endpoints` / `candidate_endpoints` entry (contract §1)."""
    return _entry(value, hostname=False)


def parse_hostname(value: str) -> Entry:
    """Parse an environment's own `hostname`: a name or IP literal, no wildcard, no port."""
    return _entry(value, hostname=True)


def _entry(value: str, *, hostname: bool) -> Entry:
    if not isinstance(value, str):
        raise InvalidEntry(f"must be a string, not {type(value).__name__}")
    # Most entries are already canonical lowercase names: accept those in one regex match,
    # since lists of 100,000 entries are validated on every reload.
    if PLAIN_ENTRY_RE.fullmatch(value) is not None and not (hostname and ":" in value):
        return plain_entry(value)
    shown = _show_entry(value)
    # Lists of 100,000 entries are compiled on every reload: values made only of host
    # characters cannot hold any of the mistakes _structure_error explains, so skip it.
    why = None if _HOST_CHARS_RE.fullmatch(value) else _structure_error(value)
    if why is not None:
        raise InvalidEntry(f"{shown}: {why}")
    ascii_value = value if value.isascii() else _to_a_labels(value, shown)
    if ascii_value.startswith("*"):
        if hostname:
            raise InvalidEntry(f"{shown}: a hostname cannot be a wildcard")
        entry = _wildcard(ascii_value, shown)
    else:
        if "*" in ascii_value:
            raise InvalidEntry(
                f"{shown}: '*' is allowed only as the whole first label, as in '*.example.com'"
            )
        if ascii_value.count(":") > 1 and not ascii_value.startswith("["):
            raise InvalidEntry(
                f"{shown}: an IPv6 literal must be in brackets, e.g. '[2001:db8::1]'"
            )
        try:
            auth = _authority(ascii_value)
        except _Bad as exc:
            raise InvalidEntry(f"{shown}: {exc.why}") from None
        if auth.host in ("0.0.0.0", "[::]"):
            # The unspecified address is "any interface" to bind(); as a Host it names no
            # one, and allowing it would let through clients that send it (the
            # "0.0.0.0 day" browser requests to local services).
            raise InvalidEntry(f"{shown}: the unspecified address cannot be allowed")
        if hostname and auth.port is not None:
            raise InvalidEntry(f"{shown}: a hostname cannot have a port")
        if auth.kind == "name":
            _check_a_labels(auth.host, shown)
        text = auth.host if auth.port is None else f"{auth.host}:{auth.port}"
        entry = Entry(auth.kind, auth.host, auth.port, text)
    if entry.text == value:
        return entry
    if value.isascii():
        note = f"normalised from {value!r}"
    else:
        note = f"IDN {value!r} stored as {entry.text!r}"
    return Entry(entry.kind, entry.host, entry.port, entry.text, (note,))


def _show_entry(value: str) -> str:
    # Operator input, shown to the operator: repr keeps Unicode readable but escapes
    # controls.
    if len(value) <= _SHOW_MAX:
        return repr(value)
    return repr(value[:_SHOW_MAX]) + "..."


def _structure_error(value: str) -> str | None:
    """The mistakes people make when pasting a URL into the list, in words."""
    if not value:
        return "empty entry"
    if _SCHEME_RE.match(value):
        return "a scheme is not allowed; write the host alone, e.g. 'www.example.com'"
    if any(c.isspace() for c in value):
        return "spaces are not allowed"
    if not value.isprintable():
        return "control characters are not allowed"
    if "@" in value:
        return "user info ('user@') is not allowed; write the host alone"
    if any(c in "/?#\\" for c in value):
        return "a path, query or fragment is not allowed; write the host alone"
    return None


def _to_a_labels(value: str, shown: str) -> str:
    # Contract §1: UTS 46 non-transitional processing, as browsers do since 2017 (`faß.de`
    # stays distinct from `fass.de`). Only the name goes through idna: the `*.` prefix and
    # the port are not labels and idna would reject them.
    prefix = "*." if value.startswith("*.") else ""
    body = value[len(prefix) :]
    port = ""
    if ":" in body:
        body, sep, rest = body.rpartition(":")
        port = sep + rest
    trailing_dot = body.endswith(".")
    try:
        a_labels = idna.encode(body, uts46=True, transitional=False).decode("ascii")
    except UnicodeError as exc:  # idna.IDNAError is a UnicodeError
        raise InvalidEntry(f"{shown}: not a valid internationalised name ({exc})") from None
    if trailing_dot and not a_labels.endswith("."):
        a_labels += "."
    return prefix + a_labels + port


def _check_a_labels(host: str, shown: str) -> None:
    if "xn--" not in host:
        return
    for label in host.split("."):
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except UnicodeError as exc:
                raise InvalidEntry(
                    f"{shown}: label {label!r} is not a valid A-label ({exc})"
                ) from None


def _wildcard(value: str, shown: str) -> Entry:
    if value == "*":
        raise InvalidEntry(
            f"{shown}: a bare '*' would allow every host; write '*.example.com' or list the hosts"
        )
    if not value.startswith("*."):
        raise InvalidEntry(f"{shown}: '*' must be the whole first label, as in '*.example.com'")
    suffix = value[2:]
    if not suffix:
        raise InvalidEntry(f"{shown}: a wildcard needs a suffix, as in '*.example.com'")
    if "*" in suffix:
        raise InvalidEntry(f"{shown}: only one leading '*.' is allowed")
    try:
        auth = _authority(suffix)
    except _Bad as exc:
        raise InvalidEntry(f"{shown}: invalid wildcard suffix: {exc.why}") from None
    if auth.port is not None:
        raise InvalidEntry(f"{shown}: a wildcard cannot have a port")
    if auth.kind != "name":
        raise InvalidEntry(f"{shown}: a wildcard suffix must be a name, not an IP address")
    if "." not in auth.host:
        raise InvalidEntry(
            f"{shown}: a wildcard suffix needs at least two labels "
            f"('*.{auth.host}' would match a whole top-level domain)"
        )
    _check_a_labels(auth.host, shown)
    return Entry("wildcard", auth.host, None, f"*.{auth.host}")


# --- Public suffixes -------------------------------------------------------------------

# A SUBSET of the Public Suffix List (https://publicsuffix.org/list/): the multi-label
# suffixes, ICANN and private, most likely to be written by mistake as `*.suffix`. It only
# feeds a lint warning; install `publicsuffixlist` to check against the whole list.
_COMMON_PUBLIC_SUFFIXES_TEXT: Final = """
    co.uk org.uk me.uk ltd.uk plc.uk net.uk sch.uk ac.uk gov.uk nhs.uk police.uk
    com.au net.au org.au edu.au gov.au asn.au id.au
    co.nz net.nz org.nz govt.nz ac.nz
    co.jp ne.jp or.jp ac.jp go.jp ad.jp ed.jp gr.jp lg.jp
    co.kr or.kr ne.kr re.kr go.kr ac.kr
    com.cn net.cn org.cn gov.cn edu.cn ac.cn
    com.hk net.hk org.hk edu.hk gov.hk
    com.tw net.tw org.tw edu.tw gov.tw
    com.sg net.sg org.sg edu.sg gov.sg
    com.my net.my org.my edu.my gov.my
    co.in net.in org.in firm.in gen.in ind.in ac.in edu.in gov.in
    co.id or.id ac.id go.id web.id
    co.th or.th ac.th go.th in.th
    com.ph net.ph org.ph com.vn net.vn com.pk com.bd com.np com.lk
    com.br net.br org.br gov.br edu.br art.br
    com.ar net.ar org.ar com.mx net.mx org.mx gob.mx com.co net.co com.pe com.ve com.uy
    com.cl com.ec com.bo com.py
    co.za org.za net.za gov.za ac.za web.za com.ng com.eg com.gh co.ke or.ke co.tz co.ug
    com.tr net.tr org.tr gov.tr co.il org.il ac.il gov.il com.sa net.sa com.qa com.kw
    com.ua net.ua org.ua com.ru net.ru org.ru com.pl net.pl org.pl com.es org.es
    com.pt co.at or.at gv.at com.gr com.cy com.mt
    github.io githubusercontent.com gitlab.io bitbucket.io
    herokuapp.com herokussl.com appspot.com blogspot.com firebaseapp.com web.app
    netlify.app netlify.com vercel.app now.sh pages.dev workers.dev trycloudflare.com
    azurewebsites.net azurestaticapps.net cloudapp.net azureedge.net trafficmanager.net
    cloudfront.net s3.amazonaws.com elasticbeanstalk.com awsapps.com
    fly.dev onrender.com railway.app ngrok.io ngrok-free.app ngrok.app glitch.me
    repl.co replit.dev readthedocs.io wordpress.com wixsite.com myshopify.com
    deno.dev surge.sh pythonanywhere.com
    dyndns.org duckdns.org no-ip.org ddns.net
"""
_COMMON_PUBLIC_SUFFIXES: Final = frozenset(_COMMON_PUBLIC_SUFFIXES_TEXT.split())


def _load_psl() -> Any:
    # Optional dependency, never required: resolved at import time so the check stays
    # a plain call.
    try:
        from publicsuffixlist import PublicSuffixList  # type: ignore[import-not-found]
    except ImportError:
        return None
    return PublicSuffixList()


_PSL: Final = _load_psl()


def is_public_suffix_wildcard(suffix: str) -> bool:
    """True when `*.suffix` would cover a public suffix ("co.uk", "github.io").

    Without the `publicsuffixlist` package only a built-in subset of multi-label
    suffixes is known; every single label counts (the PSL's implicit `*` rule).
    """
    s = suffix.lower().removeprefix("*.").removesuffix(".")
    if "." not in s:
        return True
    if _PSL is not None:
        return bool(_PSL.publicsuffix(s) == s)
    return s in _COMMON_PUBLIC_SUFFIXES
