"""Adversarial corpus against the live gateway, under both of aiohttp's HTTP parsers.

Host-header attacks (duplicate Host, obs-fold, absolute-form and userinfo tricks, override
headers, control and non-ASCII bytes, over-long values, IPv6/IPv4/port tricks) and
request-smuggling shapes (CL.TE, TE.CL, TE.TE obfuscation, bad Content-Length, bad chunk
sizes, bare LF/CR) in the manner of James Kettle's "HTTP Desync Attacks" (2019) and
"Browser-Powered Desync Attacks" (2022), sent as raw bytes on real sockets.

Every case states what contract §2 requires, one outcome per response on its connection:
allowed (200 from the echo upstream, which must have seen exactly the normalised Host),
blocked (503 unknown_host), 400, 405 (CONNECT), 413 (body too large). Whatever the
case, for every request of the corpus:
- no 5xx other than the configured 503 refusal;
- no request hidden in a body ever reaches the upstream or is answered: the word
  ``SMUGGLED`` appears only inside bodies/values that must never be parsed as a request,
  so it must never come back in any response (the echo upstream returns the path and
  headers it saw);
- the upstream never sees a client's override header (X-Forwarded-Host, X-Host,
  Forwarded, any name with ``_`` ...), and its Host is exactly the normalised allowed host;
- a fresh ``GET /probe-N`` after the case is answered for ``/probe-N`` (nothing left over
  on the gateway's pooled upstream connections: no response-queue poisoning);
- afterwards the process is alive and allowed + blocked counters equal the responses.

Where RFC 9112 leaves a recipient a choice (bare LF as a line end, leading empty line,
``HTTP/1.2``) both safe answers are accepted and written as ``alt``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import PY, Gateway, RawResponse, Upstream, metric_sum, read_response, start_gateway

# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    kind: str  # "allowed" | "blocked" | "400" | "405" | "413"
    host: str | None = None  # allowed: the exact Host the upstream must see
    path: str | None = None  # allowed: the path the upstream must see (when it matters)

    def __str__(self) -> str:
        if self.kind != "allowed":
            return self.kind
        return f"allowed({self.host}{' ' + self.path if self.path else ''})"


def A(host: str = "www.acme.com", path: str | None = None) -> Out:
    return Out("allowed", host, path)


BLOCKED = Out("blocked")
R400 = Out("400")
R405 = Out("405")
R413 = Out("413")
STATUS_KIND = {503: "blocked", 400: "400", 405: "405", 413: "413"}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: tuple[Out, ...]
    why: str
    # Other outcome sequences that also satisfy the contract (RFC 9112 "MAY" choices).
    alt: tuple[tuple[Out, ...], ...] = ()
    timeout: float = 5.0


def _case(
    name: str,
    data: bytes,
    expect: Out | tuple[Out, ...],
    why: str,
    alt: list[Out | tuple[Out, ...]] | None = None,
) -> Case:
    exp = expect if isinstance(expect, tuple) else (expect,)
    alts = tuple(a if isinstance(a, tuple) else (a,) for a in alt or ())
    return Case(name, data, exp, why, alt=alts)


def host_req(value: bytes, target: bytes = b"/c", version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"GET " + target + b" " + version + b"\r\nHost: " + value + b"\r\nConnection: close\r\n\r\n"
    )


def lines(*ls: bytes, body: bytes = b"") -> bytes:
    """Header block from explicit lines (each without its CRLF), then the body."""
    return b"".join(ln + b"\r\n" for ln in ls) + b"\r\n" + body


# A complete request that must never be parsed as one: if it ever is, the echo upstream's
# answer names /SMUGGLED and the corpus-wide check fails.
SMUG = b"GET /SMUGGLED HTTP/1.1\r\nHost: www.acme.com\r\nContent-Length: 0\r\n\r\n"
# The legitimate next request on the same connection, closing it so reads end promptly.
PROBE = b"GET /next HTTP/1.1\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n"
NEXT = A(path="/next")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


SMUG_CHUNKED = chunk(SMUG) + b"0\r\n\r\n"

# -- the corpus ------------------------------------------------------------------------------

# Single Host header, value under test (contract §2 steps 2-3).
HOST_VALUES: list[tuple[str, bytes, Out, str]] = [
    # allowed, with the normalised Host the upstream must receive
    ("plain", b"www.acme.com", A(), "exact endpoint"),
    ("upper-case", b"WWW.ACME.COM", A(), "lowercased"),
    ("trailing-dot", b"www.acme.com.", A(), "one trailing dot dropped"),
    ("default-port", b"www.acme.com:80", A(), "default port not forwarded"),
    ("default-port-leading-zero", b"www.acme.com:080", A(), "ports compare as integers"),
    ("other-port", b"www.acme.com:8080", A("www.acme.com:8080"), "exact host: any port"),
    ("ported-entry", b"acme.com:8443", A("acme.com:8443"), "host:port entry"),
    ("ported-entry-zero-pad", b"acme.com:08443", A("acme.com:8443"), "integer port compare"),
    ("ported-entry-dot-case", b"ACME.com.:8443", A("acme.com:8443"), "normalised then port"),
    ("wildcard", b"a.shop.acme.com", A("a.shop.acme.com"), "one label"),
    ("wildcard-deep", b"x.y.shop.acme.com", A("x.y.shop.acme.com"), "several labels"),
    ("wildcard-underscore", b"a_b.shop.acme.com", A("a_b.shop.acme.com"), "underscore allowed"),
    ("own-hostname", b"app.internal.example", A("app.internal.example"), "hostname always"),
    ("ipv6", b"[2001:db8::1]", A("[2001:db8::1]"), "IPv6 literal"),
    ("ipv6-long-upper", b"[2001:DB8:0:0:0:0:0:1]", A("[2001:db8::1]"), "RFC 5952 normalised"),
    ("ipv6-zeros", b"[2001:0db8:0000::0001]", A("[2001:db8::1]"), "RFC 5952 normalised"),
    ("ipv6-default-port", b"[2001:db8::1]:80", A("[2001:db8::1]"), "default port dropped"),
    ("ipv6-other-port", b"[2001:db8::1]:8080", A("[2001:db8::1]:8080"), "port kept"),
    # valid but unknown: blocked
    ("unknown", b"evil.com", BLOCKED, "not in the list"),
    ("ported-entry-wrong-port", b"acme.com", BLOCKED, "acme.com only on 8443"),
    ("ported-entry-443", b"acme.com:443", BLOCKED, "acme.com only on 8443"),
    ("wildcard-apex", b"shop.acme.com", BLOCKED, "a wildcard never matches its apex"),
    ("suffix-confusion", b"www.acme.com.evil.com", BLOCKED, "suffix is not the host"),
    ("prefix-confusion", b"evilwww.acme.com", BLOCKED, "label boundary"),
    ("wildcard-suffix-confusion", b"a.shop.acme.com.evil.com", BLOCKED, "suffix"),
    ("loopback-v4", b"127.0.0.1", BLOCKED, "canonical IPv4, not listed"),
    ("unspecified-v4", b"0.0.0.0", BLOCKED, "0.0.0.0-day: never allowed"),
    ("loopback-v6", b"[::1]", BLOCKED, "not listed"),
    ("v4-mapped", b"[::ffff:127.0.0.1]", BLOCKED, "not listed"),
    ("other-v6", b"[2001:db8::2]", BLOCKED, "not listed"),
    ("localhost", b"localhost", BLOCKED, "not listed"),
    # malformed: 400 (contract §2 step 2 lists most of these verbatim)
    ("empty", b"", R400, "empty value"),
    ("dot", b".", R400, "empty label"),
    ("dot-dot", b"..", R400, "empty labels"),
    ("at", b"@", R400, "userinfo marker"),
    ("percent", b"%", R400, "percent"),
    ("two-trailing-dots", b"www.acme.com..", R400, "only ONE trailing dot is dropped"),
    ("leading-dot", b".www.acme.com", R400, "empty label"),
    ("inner-empty-label", b"www..acme.com", R400, "empty label"),
    ("empty-port", b"www.acme.com:", R400, "good.com: is malformed"),
    ("two-ports", b"www.acme.com:443:80", R400, "parsers disagree on which port wins"),
    ("port-zero", b"www.acme.com:0", R400, "port 1-65535"),
    ("port-too-big", b"www.acme.com:65536", R400, "port 1-65535"),
    ("port-wraps-to-80", b"www.acme.com:65616", R400, "65616 & 0xffff == 80"),
    ("port-plus", b"www.acme.com:+80", R400, "int('+80') == 80 in Python"),
    ("port-minus", b"www.acme.com:-80", R400, "sign"),
    ("port-six-digits", b"acme.com:008443", R400, "1-5 digits"),
    ("port-letters", b"www.acme.com:8o", R400, "good.com:bad"),
    ("port-fullwidth-digits", "www.acme.com:８０".encode(), R400, "int('８０') == 80 in Python"),
    ("port-space", b"www.acme.com: 80", R400, "space"),
    ("userinfo-then-evil", b"www.acme.com@evil.com", R400, "good.com@evil.com"),
    ("evil-userinfo", b"evil.com@www.acme.com", R400, "URL parsers route to www.acme.com"),
    ("user-pass", b"u:p@www.acme.com", R400, "userinfo"),
    ("path", b"www.acme.com/evil", R400, "good.com/x"),
    ("backslash", b"www.acme.com\\evil.com", R400, "WHATWG treats \\ as /"),
    ("query", b"www.acme.com?x", R400, "query"),
    ("fragment", b"www.acme.com#x", R400, "fragment"),
    ("percent-dot", b"www%2eacme.com", R400, "percent-encoded dot"),
    ("percent-nul", b"www.acme.com%00", R400, "percent-encoded NUL"),
    ("percent-encoded-host", b"%77%77%77.acme.com", R400, "percent-encoded www"),
    ("comma", b"www.acme.com,evil.com", R400, "list syntax in a singleton"),
    ("comma-space", b"evil.com, www.acme.com", R400, "first/last value confusion"),
    ("space", b"www.acme.com evil.com", R400, "a b"),
    ("tab-inside", b"www.acme.com\tevil.com", R400, "HTAB inside a value"),
    ("leading-hyphen", b"-a.shop.acme.com", R400, "LDH"),
    ("trailing-hyphen", b"a-.shop.acme.com", R400, "LDH"),
    ("label-64", b"a" * 64 + b".shop.acme.com", R400, "label over 63"),
    ("name-over-253", b"a." * 121 + b"shop.acme.com", R400, "name over 253"),
    ("literal-star", b"*.shop.acme.com", R400, "a wildcard is not a Host"),
    ("star", b"*", R400, "not a host"),
    ("hex-v4", b"0x7f.1", R400, "inet_aton spelling of 127.0.0.1"),
    ("short-v4", b"127.1", R400, "inet_aton spelling of 127.0.0.1"),
    ("decimal-v4", b"2130706433", R400, "integer spelling of 127.0.0.1"),
    ("octal-v4", b"0177.0.0.1", R400, "octal spelling"),
    ("v4-trailing-dot", b"1.2.3.4.", R400, "IPv4 with trailing dot"),
    ("v4-out-of-range", b"256.0.0.1", R400, "octet > 255"),
    ("v4-empty-port", b"127.0.0.1:", R400, "empty port"),
    ("name-ends-in-number", b"www.acme.123", R400, "ends in a number: an IPv4 to browsers"),
    ("name-ends-in-hex", b"www.acme.0x1", R400, "ends in 0x-hex"),
    ("v6-empty-port", b"[2001:db8::1]:", R400, "empty port"),
    ("v6-zone-encoded", b"[2001:db8::1%25eth0]", R400, "RFC 6874 zone id"),
    ("v6-zone-raw", b"[2001:db8::1%eth0]", R400, "zone id"),
    ("v6-unbracketed", b"2001:db8::1", R400, "IPv6 must be bracketed"),
    ("v6-trailing-junk", b"[2001:db8::1]evil", R400, "[::1]evil"),
    ("v6-two-ports", b"[2001:db8::1]:80:80", R400, "two ports"),
    ("v6-unclosed", b"[2001:db8::1", R400, "no ]"),
    ("v6-unopened", b"2001:db8::1]", R400, "no ["),
    ("v6-name-inside", b"[www.acme.com]", R400, "not an IPv6 literal"),
    ("v6-too-many-groups", b"[2001:db8:0:0:0:0:0:0:1]", R400, "nine groups"),
    ("v6-fullwidth", "[2001:db8::１]".encode(), R400, "int('１', 16) == 1 in Python"),
    ("v6-userinfo", b"[2001:db8::1]@evil.com", R400, "userinfo after literal"),
    ("non-ascii-utf8", "www.acmé.com".encode(), R400, "ASCII only"),
    ("non-ascii-latin1", b"www.acme.com\xff", R400, "ASCII only"),
    ("fullwidth-dot", "www.acme．com".encode(), R400, "IDNA maps U+FF0E to '.'"),
    ("kelvin-sign", "a.shop.acme.co\u212a".encode(), R400, "U+212A lowercases to k"),
    ("long-s", "a.\u017fhop.acme.com".encode(), R400, "U+017F case-folds to s"),
    ("nul-inside", b"www.acme.com\x00.evil.com", R400, "NUL (C string truncation)"),
    ("nul-end", b"www.acme.com\x00", R400, "NUL"),
    ("vertical-tab", b"www.acme.com\x0b", R400, "VT is not OWS"),
    ("form-feed", b"\x0cwww.acme.com", R400, "FF is not OWS"),
    ("del", b"www.acme.com\x7f", R400, "DEL"),
    ("escape-seq", b"www.acme.com\x1b[2J", R400, "terminal escape (log injection)"),
    ("bare-cr", b"www.acme.com\rX-Injected: 1", R400, "bare CR: reject (RFC 9112 2.2)"),
    ("over-8k", b"a" * 9000, R400, "over the 8 KB field limit"),
    ("over-8k-allowed-suffix", b"a." * 4100 + b"shop.acme.com", R400, "8 KB of labels"),
]

CASES: list[Case] = [
    _case(f"host-{name}", host_req(value), out, why) for name, value, out, why in HOST_VALUES
]

CASES += [
    # -- Host header shape (contract §2 step 1; RFC 9112 §3.2, §5) --------------------------
    _case(
        "no-space-after-colon",
        lines(b"GET /c HTTP/1.1", b"Host:www.acme.com", b"Connection: close"),
        A(),
        "OWS is optional",
    ),
    _case(
        "trailing-spaces",
        lines(b"GET /c HTTP/1.1", b"Host: www.acme.com   ", b"Connection: close"),
        A(),
        "OWS is not part of the value (RFC 9110 5.5)",
    ),
    _case(
        "tabs-around",
        lines(b"GET /c HTTP/1.1", b"Host:\twww.acme.com\t", b"Connection: close"),
        A(),
        "HTAB is OWS",
    ),
    _case(
        "lowercase-name",
        lines(b"GET /c HTTP/1.1", b"hOsT: www.acme.com", b"Connection: close"),
        A(),
        "names are case-insensitive",
    ),
    _case(
        "duplicate-same",
        lines(
            b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Host: www.acme.com", b"Connection: close"
        ),
        R400,
        "exactly one Host",
    ),
    _case(
        "duplicate-case",
        lines(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"host: evil.com", b"Connection: close"),
        R400,
        "first-vs-last Host confusion",
    ),
    _case(
        "duplicate-case-evil-first",
        lines(b"GET /c HTTP/1.1", b"HOST: evil.com", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "first-vs-last Host confusion",
    ),
    _case(
        "duplicate-apart",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            b"X-A: 1",
            b"hOST: evil.com",
            b"Connection: close",
        ),
        R400,
        "not adjacent",
    ),
    _case(
        "duplicate-empty",
        lines(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Host:", b"Connection: close"),
        R400,
        "an empty second Host still counts",
    ),
    _case(
        "missing-1.1",
        lines(b"GET /c HTTP/1.1", b"Connection: close"),
        R400,
        "HTTP/1.1 without Host",
    ),
    _case(
        "missing-1.0", lines(b"GET /c HTTP/1.0"), R400, "never fall back to the server's own name"
    ),
    _case(
        "http10-with-host",
        lines(b"GET /c HTTP/1.0", b"Host: www.acme.com"),
        A(),
        "HTTP/1.0 with Host",
    ),
    _case(
        "host-empty-value", lines(b"GET /c HTTP/1.1", b"Host:", b"Connection: close"), R400, "empty"
    ),
    _case(
        "space-before-colon",
        lines(b"GET /c HTTP/1.1", b"Host : evil.com", b"Connection: close"),
        R400,
        "RFC 9112 5.1: MUST 400",
    ),
    _case(
        "space-before-colon-second",
        lines(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Host : evil.com", b"Connection: close"),
        R400,
        "a lax parser would see a second header named 'Host '",
    ),
    _case(
        "tab-before-colon",
        lines(b"GET /c HTTP/1.1", b"Host\t: evil.com", b"Connection: close"),
        R400,
        "RFC 9112 5.1",
    ),
    _case(
        "no-colon",
        lines(b"GET /c HTTP/1.1", b"Host www.acme.com", b"Connection: close"),
        R400,
        "not a field line",
    ),
    _case(
        "empty-name",
        lines(b"GET /c HTTP/1.1", b"Host: www.acme.com", b": evil.com", b"Connection: close"),
        R400,
        "empty field name",
    ),
    _case(
        "nul-in-name",
        lines(
            b"GET /c HTTP/1.1", b"Ho\x00st: evil.com", b"Host: www.acme.com", b"Connection: close"
        ),
        R400,
        "C-string truncation",
    ),
    _case(
        "space-in-name",
        lines(b"GET /c HTTP/1.1", b"X Host: evil.com", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "not a token",
    ),
    _case(
        "non-ascii-name",
        lines(
            b"GET /c HTTP/1.1",
            "Hos\u0163: evil.com".encode(),
            b"Host: www.acme.com",
            b"Connection: close",
        ),
        R400,
        "not a token",
    ),
    _case(
        "obs-fold-host",
        lines(b"GET /c HTTP/1.1", b"Host: evil.com", b" www.acme.com", b"Connection: close"),
        R400,
        "obs-fold: a folding front-end sees 'evil.com www.acme.com', others see two values",
    ),
    _case(
        "obs-fold-host-tab",
        lines(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"\tevil.com", b"Connection: close"),
        R400,
        "obs-fold with HTAB",
    ),
    _case(
        "obs-fold-hides-host",
        lines(
            b"GET /c HTTP/1.1",
            b"X-A: 1",
            b" Host: evil.com",
            b"Host: www.acme.com",
            b"Connection: close",
        ),
        R400,
        "a fold that hides a Host line from some parsers",
        alt=[A()],  # unfolded to SP (RFC 9112 5.2) then X-A carries the text: still safe
    ),
    _case(
        "leading-space-first-header",
        lines(b"GET /c HTTP/1.1", b" Host: evil.com", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "RFC 9112 2.2: whitespace before the first field line: reject or ignore the line",
        alt=[A()],
    ),
    # -- CR, LF, NUL (RFC 9110 5.5: MUST reject or replace with SP) --------------------------
    _case(
        "bare-lf-host-then-evil",
        b"GET /c HTTP/1.1\r\nHost: www.acme.com\nHost: evil.com\r\nConnection: close\r\n\r\n",
        R400,
        "bare LF splits into two Hosts for some parsers",
    ),
    _case(
        "bare-lf-evil-then-host",
        b"GET /c HTTP/1.1\r\nHost: evil.com\nHost: www.acme.com\r\nConnection: close\r\n\r\n",
        R400,
        "bare LF",
    ),
    _case(
        "bare-lf-in-other-header",
        b"GET /c HTTP/1.1\r\nX-A: 1\nHost: evil.com\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n",
        R400,
        "a Host hidden after a bare LF inside another header's value",
        alt=[A()],
    ),
    _case(
        "bare-cr-in-other-header",
        b"GET /c HTTP/1.1\r\nX-A: 1\rHost: evil.com\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n",
        R400,
        "bare CR",
        alt=[A()],
    ),
    _case(
        "nul-in-other-header",
        b"GET /c HTTP/1.1\r\nX-A: 1\x00Host: evil.com\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n",
        R400,
        "NUL in a value",
    ),
    _case(
        "bare-lf-everywhere",
        b"GET /c HTTP/1.1\nHost: www.acme.com\nConnection: close\n\n",
        A(),
        "RFC 9112 2.2: a recipient MAY accept a lone LF as a line end",
        alt=[R400],
    ),
    _case(
        "bare-cr-everywhere",
        b"GET /c HTTP/1.1\rHost: www.acme.com\rConnection: close\r\r\r\n\r\n",
        R400,
        "bare CR: MUST reject or replace",
    ),
    # -- spoofing headers: never believed, never forwarded (contract §2) -------------------
    _case(
        "override-headers-allowed",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            b"X-Forwarded-Host: evil.com",
            b"x-fOrWaRdEd-hOsT: evil.com",
            b"X-Host: evil.com",
            b"X-Original-Host: evil.com",
            b"X-HTTP-Host-Override: evil.com",
            b"Forwarded: for=1.2.3.4;host=evil.com;proto=https",
            b"X-Forwarded-Server: evil.com",
            b"X-Forwarded-Port: 1",
            b"X-Forwarded-Proto: gopher",
            b"X-Forwarded-Prefix: /evil",
            b"X-Forwarded-Scheme: evil",
            b"X-Forwarded-Ssl: on",
            b"X-Original-URL: /SMUGGLED",
            b"X-Rewrite-URL: /SMUGGLED",
            b"X-Real-IP: 6.6.6.6",
            b"X_Forwarded_Host: evil.com",
            b"X-Forwarded_Host: evil.com",
            b"X_Host: evil.com",
            b"X-Request-ID: client-chosen",
            b"Connection: close",
        ),
        A(path="/c"),
        "Host-header poisoning via override headers (password-reset links, cache keys)",
    ),
    _case(
        "xfh-to-allowed-from-evil",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: evil.com",
            b"X-Forwarded-Host: www.acme.com",
            b"Connection: close",
        ),
        BLOCKED,
        "the override never decides",
    ),
    _case(
        "x-host-to-allowed-from-evil",
        lines(b"GET /c HTTP/1.1", b"Host: evil.com", b"X-Host: www.acme.com", b"Connection: close"),
        BLOCKED,
        "the override never decides",
    ),
    _case(
        "forwarded-to-allowed-from-evil",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: evil.com",
            b"Forwarded: host=www.acme.com",
            b"Connection: close",
        ),
        BLOCKED,
        "the override never decides",
    ),
    _case(
        "underscore-xfh-from-evil",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: evil.com",
            b"X_Forwarded_Host: www.acme.com",
            b"Connection: close",
        ),
        BLOCKED,
        "WSGI reads _ as -",
    ),
    _case(
        "xfh-only",
        lines(b"GET /c HTTP/1.1", b"X-Forwarded-Host: www.acme.com", b"Connection: close"),
        R400,
        "no Host: missing, whatever XFH says",
    ),
    _case(
        "connection-nominates-host",
        lines(
            b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Connection: close, Host, X-Forwarded-Host"
        ),
        A(),
        "Connection must not strip the gateway's own Host/XFH",
    ),
    # -- absolute-form (contract §2 step 4) ------------------------------------------------
    _case(
        "abs-same",
        host_req(b"www.acme.com", b"http://www.acme.com/a?x=1"),
        A(path="/a?x=1"),
        "origin form upstream",
    ),
    _case(
        "abs-case-dot",
        host_req(b"www.acme.com", b"http://WWW.ACME.COM./a"),
        A(path="/a"),
        "normalised the same way",
    ),
    _case(
        "abs-default-port",
        host_req(b"www.acme.com", b"http://www.acme.com:80/a"),
        A(path="/a"),
        "scheme default port dropped",
    ),
    _case(
        "abs-host-has-default-port",
        host_req(b"www.acme.com:80", b"http://www.acme.com/a"),
        A(path="/a"),
        "port 80 both",
    ),
    _case(
        "abs-no-path",
        host_req(b"www.acme.com", b"http://www.acme.com"),
        A(path="/"),
        "empty path is /",
    ),
    _case(
        "abs-query-no-path",
        host_req(b"www.acme.com", b"http://www.acme.com?q=1"),
        A(path="/?q=1"),
        "query without path",
    ),
    _case(
        "abs-https-ported",
        host_req(b"acme.com:8443", b"https://acme.com:8443/a"),
        A("acme.com:8443", "/a"),
        "explicit port both",
    ),
    _case(
        "abs-ipv6",
        host_req(b"[2001:db8::1]", b"http://[2001:DB8::1]:80/a"),
        A("[2001:db8::1]", "/a"),
        "RFC 5952 both",
    ),
    _case(
        "abs-upper-scheme",
        host_req(b"www.acme.com", b"HTTP://www.acme.com/a"),
        A(path="/a"),
        "scheme is case-insensitive",
        alt=[R400],
    ),
    _case(
        "abs-mismatch", host_req(b"www.acme.com", b"http://evil.com/a"), R400, "routing-based SSRF"
    ),
    _case(
        "abs-mismatch-evil-host",
        host_req(b"evil.com", b"http://www.acme.com/a"),
        R400,
        "authority_mismatch",
    ),
    _case(
        "abs-https-vs-80", host_req(b"www.acme.com", b"https://www.acme.com/a"), R400, "443 vs 80"
    ),
    _case(
        "abs-port-mismatch",
        host_req(b"www.acme.com", b"http://www.acme.com:8080/a"),
        R400,
        "8080 vs 80",
    ),
    _case(
        "abs-userinfo-evil-host",
        host_req(b"www.acme.com", b"http://www.acme.com@evil.com/a"),
        R400,
        "the real host is evil.com",
    ),
    _case(
        "abs-userinfo-evil-host-evil",
        host_req(b"evil.com", b"http://www.acme.com@evil.com/a"),
        R400,
        "userinfo: malformed authority",
    ),
    _case(
        "abs-userinfo-good-host",
        host_req(b"www.acme.com", b"http://evil.com@www.acme.com/a"),
        R400,
        "userinfo is malformed",
    ),
    _case(
        "abs-user-pass",
        host_req(b"www.acme.com", b"http://u:p@www.acme.com/a"),
        R400,
        "userinfo is malformed",
    ),
    _case(
        "abs-backslash",
        host_req(b"www.acme.com", b"http://www.acme.com\\@evil.com/a"),
        R400,
        "WHATWG: \\ ends the authority",
    ),
    _case(
        "abs-encoded-at",
        host_req(b"www.acme.com", b"http://www.acme.com%40evil.com/a"),
        R400,
        "percent in authority",
    ),
    _case(
        "abs-idn",
        host_req(b"www.acme.com", "http://www.acmé.com/a".encode()),
        R400,
        "non-ASCII authority",
    ),
    _case("abs-empty-authority", host_req(b"www.acme.com", b"http:///a"), R400, "empty authority"),
    _case("abs-ftp", host_req(b"www.acme.com", b"ftp://www.acme.com/a"), R400, "not http(s)"),
    _case(
        "abs-two-slashes-missing",
        host_req(b"www.acme.com", b"http:/www.acme.com/a"),
        R400,
        "not absolute-form",
    ),
    _case(
        "authority-form-on-get",
        host_req(b"www.acme.com", b"www.acme.com:80"),
        R400,
        "authority-form only for CONNECT",
    ),
    _case(
        "connect-allowed-host",
        lines(
            b"CONNECT www.acme.com:443 HTTP/1.1", b"Host: www.acme.com:443", b"Connection: close"
        ),
        R405,
        "CONNECT is refused with 405",
    ),
    _case(
        "connect-evil",
        lines(b"CONNECT evil.com:443 HTTP/1.1", b"Host: evil.com:443", b"Connection: close"),
        R405,
        "CONNECT: 405, never a tunnel",
    ),
    _case(
        "asterisk-options",
        lines(b"OPTIONS * HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        A(path="*"),
        "asterisk-form: forwarded as is",
        alt=[R400],
    ),
    # -- request line (RFC 9112 §3) --------------------------------------------------------
    _case("http09", b"GET /c\r\n\r\n", R400, "HTTP/0.9 has no headers, hence no Host"),
    _case(
        "http2-version",
        lines(b"GET /c HTTP/2.0", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "HTTP/2 is out of scope; not an HTTP/1 request",
    ),
    _case(
        "h2-preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        R400,
        "h2 prior knowledge on an h1 listener",
    ),
    _case(
        "http12",
        lines(b"GET /c HTTP/1.2", b"Host: www.acme.com", b"Connection: close"),
        A(),
        "RFC 9110 2.5: a higher minor is answered as 1.1",
        alt=[R400],
    ),
    _case(
        "http99",
        lines(b"GET /c HTTP/9.9", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "unknown major",
    ),
    _case(
        "version-lowercase",
        lines(b"GET /c http/1.1", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "HTTP-name is case-sensitive",
    ),
    _case(
        "extra-token",
        lines(b"GET /c HTTP/1.1 x", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "four words",
    ),
    _case(
        "space-in-target",
        lines(b"GET /c /SMUGGLED HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "space in the target",
    ),
    _case(
        "nul-in-target",
        lines(b"GET /c\x00/SMUGGLED HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "NUL in the target",
    ),
    _case(
        "nul-in-method",
        lines(b"G\x00ET /c HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "NUL in the method",
    ),
    _case(
        "double-space",
        lines(b"GET  /c HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "RFC 9112 3: single SP",
        alt=[A()],
    ),
    _case(
        "leading-crlf",
        b"\r\n" + lines(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        A(),
        "RFC 9112 2.2: SHOULD ignore one leading empty line",
        alt=[R400],
    ),
    _case(
        "non-ascii-target",
        lines("GET /ç HTTP/1.1".encode(), b"Host: www.acme.com", b"Connection: close"),
        R400,
        "raw non-ASCII in the target",
        alt=[A()],
    ),
    _case(
        "long-target",
        lines(b"GET /" + b"a" * 9000 + b" HTTP/1.1", b"Host: www.acme.com", b"Connection: close"),
        R400,
        "request line over 8 KB",
    ),
    _case(
        "too-many-headers",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            *[b"X-%d: y" % i for i in range(200)],
            b"Connection: close",
        ),
        R400,
        "over limits.max_headers",
    ),
    _case(
        "long-other-header",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            b"X-Big: " + b"a" * 9000,
            b"Connection: close",
        ),
        R400,
        "field over 8 KB",
    ),
    # -- smuggling: CL.TE / TE.CL (RFC 9112 6.1: TE with CL is an attack: 400 and close) -------
    _case(
        "cl-te",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: %d" % (5 + len(SMUG)),
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n" + SMUG,
        ),
        R400,
        "CL.TE: a CL-reading front-end forwards SMUG inside the body, a TE back-end sees it as a request",
    ),
    _case(
        "te-cl",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Content-Length: 3",
            body=SMUG_CHUNKED,
        ),
        R400,
        "TE.CL",
    ),
    _case(
        "cl-te-evil-host",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: evil.com",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        R400,
        "CL+TE whatever the Host",
    ),
    _case(
        "cl-te-lower-upper",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"content-length: 5",
            b"TRANSFER-ENCODING: CHUNKED",
            body=b"0\r\n\r\n" + SMUG,
        ),
        R400,
        "case variants",
    ),
    _case(
        "cl-zero-te",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 0",
            b"Transfer-Encoding: chunked",
            body=SMUG_CHUNKED,
        ),
        R400,
        "CL: 0 with TE",
    ),
    # -- smuggling: TE.TE obfuscation (Kettle 2019) -----------------------------------------
    _case(
        "te-xchunked",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: xchunked",
            body=SMUG_CHUNKED,
        ),
        R400,
        "unknown coding",
    ),
    _case(
        "te-xchunked-cl",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: xchunked",
            b"Content-Length: %d" % len(SMUG_CHUNKED),
            body=SMUG_CHUNKED,
        ),
        R400,
        "unknown coding with CL",
    ),
    _case(
        "te-chunked-identity",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked, identity",
            body=SMUG_CHUNKED,
        ),
        R400,
        "chunked not final: 400 (RFC 9112 6.3)",
    ),
    _case(
        "te-identity-chunked",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: identity, chunked",
            b"Connection: close",
            body=b"5\r\nhello\r\n0\r\n\r\n",
        ),
        R400,
        "identity is no longer a coding",
        alt=[A()],
    ),
    _case(
        "te-twice-chunked-identity",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: identity",
            body=SMUG_CHUNKED,
        ),
        R400,
        "duplicate TE: first vs last",
    ),
    _case(
        "te-twice-identity-chunked",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: identity",
            b"Transfer-Encoding: chunked",
            b"Content-Length: 3",
            body=SMUG_CHUNKED,
        ),
        R400,
        "duplicate TE with CL",
    ),
    _case(
        "te-twice-chunked",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"0\r\n\r\n",
        ),
        R400,
        "chunked applied twice",
        alt=[A()],
    ),
    _case(
        "te-space-before-colon",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding : chunked",
            b"Content-Length: 3",
            body=SMUG_CHUNKED,
        ),
        R400,
        "RFC 9112 5.1",
    ),
    _case(
        "te-tab-value",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding:\tchunked",
            body=b"5\r\nhello\r\n0\r\n\r\n" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "HTAB is OWS: plain chunked",
    ),
    _case(
        "te-trailing-space",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked ",
            body=b"5\r\nhello\r\n0\r\n\r\n" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "OWS trimmed: plain chunked",
    ),
    _case(
        "te-upper",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: CHUNKED",
            body=b"5\r\nhello\r\n0\r\n\r\n" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "codings are case-insensitive",
    ),
    _case(
        "te-quoted",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b'Transfer-Encoding: "chunked"',
            body=SMUG_CHUNKED,
        ),
        R400,
        "quoted coding",
    ),
    _case(
        "te-vtab",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: \x0bchunked",
            body=SMUG_CHUNKED,
        ),
        R400,
        "VT is not OWS",
    ),
    _case(
        "te-nul",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked\x00",
            body=SMUG_CHUNKED,
        ),
        R400,
        "NUL",
    ),
    _case(
        "te-chunk",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunk",
            body=SMUG_CHUNKED,
        ),
        R400,
        "prefix match",
    ),
    _case(
        "te-chunked-comma",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked,",
            body=SMUG_CHUNKED,
        ),
        R400,
        "empty list element",
        alt=[(A(path="/c"),)],
    ),
    _case(
        "te-non-ascii",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            "Transfer-Encoding: chunKed".replace("K", "\u212a").encode(),
            body=SMUG_CHUNKED,
        ),
        R400,
        "U+212A lowercases to k",
    ),
    _case(
        "te-obs-fold",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding:",
            b" chunked",
            b"Content-Length: %d" % len(SMUG_CHUNKED),
            body=SMUG_CHUNKED,
        ),
        R400,
        "TE value behind an obs-fold",
    ),
    _case(
        "te-underscore-with-cl",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer_Encoding: chunked",
            b"Content-Length: %d" % len(SMUG_CHUNKED),
            body=SMUG_CHUNKED + PROBE,
        ),
        (A(path="/c"), NEXT),
        "not a TE header to us: CL frames it, and the upstream never sees Transfer_Encoding",
    ),
    _case(
        "te-http10",
        lines(
            b"POST /c HTTP/1.0",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        A(path="/c"),
        "RFC 9112 6.1: TE in HTTP/1.0 is faulty framing: process, then close",
        alt=[R400],
    ),
    # -- smuggling: Content-Length forms (RFC 9110 8.6: 1*DIGIT) --------------------------------
    _case(
        "cl-plus",
        lines(
            b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: +5", body=b"hello" + SMUG
        ),
        R400,
        "int('+5') == 5",
    ),
    _case(
        "cl-minus",
        lines(b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: -1", body=SMUG),
        R400,
        "negative",
    ),
    _case(
        "cl-list",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 5, 5",
            body=b"hello" + SMUG,
        ),
        R400,
        "list form",
    ),
    _case(
        "cl-two-words",
        lines(
            b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: 5 5", body=b"hello" + SMUG
        ),
        R400,
        "two numbers",
    ),
    _case(
        "cl-hex",
        lines(
            b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: 0x5", body=b"hello" + SMUG
        ),
        R400,
        "hex",
    ),
    _case(
        "cl-underscore",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 1_0",
            body=b"helloworld" + SMUG,
        ),
        R400,
        "int('1_0') == 10",
    ),
    _case(
        "cl-fullwidth",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            "Content-Length: ５".encode(),
            body=b"hello" + SMUG,
        ),
        R400,
        "int('５') == 5",
    ),
    _case(
        "cl-vtab",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length:\x0b5",
            body=b"hello" + SMUG,
        ),
        R400,
        "VT",
    ),
    _case(
        "cl-empty",
        lines(b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length:", body=SMUG),
        R400,
        "empty",
    ),
    _case(
        "cl-wraps-2-64",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 18446744073709551621",
            body=b"hello" + SMUG,
        ),
        R400,
        "2**64+5 wraps to 5 in a uint64",
        alt=[R413],
    ),
    _case(
        "cl-huge",
        lines(
            b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: " + b"9" * 40, body=SMUG
        ),
        R400,
        "overflow",
        alt=[R413],
    ),
    _case(
        "cl-dup-same",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 5",
            b"Content-Length: 5",
            body=b"hello" + SMUG,
        ),
        R400,
        "duplicate CL (RFC 9110 allows merging; rejecting is safer)",
    ),
    _case(
        "cl-dup-diff",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 5",
            b"content-length: %d" % (5 + len(SMUG)),
            body=b"hello" + SMUG,
        ),
        R400,
        "CL.CL",
    ),
    _case(
        "cl-dup-zero",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 0",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG,
        ),
        R400,
        "CL.CL",
    ),
    _case(
        "cl-leading-zero",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: 005",
            body=b"hello" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "1*DIGIT: leading zeros are fine",
    ),
    _case(
        "cl-trailing-ows",
        lines(
            b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: 5 ", body=b"hello" + PROBE
        ),
        (A(path="/c"), NEXT),
        "OWS trimmed",
    ),
    _case(
        "cl-space-before-colon",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length : %d" % len(SMUG),
            body=SMUG,
        ),
        R400,
        "RFC 9112 5.1",
    ),
    _case(
        "cl-too-large",
        lines(b"POST /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: 1000000000", body=SMUG),
        R413,
        "over max_body_bytes: refused before reading, then close",
    ),
    # GET bodies: framed by CL, forwarded with their framing (the upstream must not parse them)
    _case(
        "get-with-body",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (A(path="/c"), NEXT),
        "GET body is a body (CL.0 desync)",
    ),
    _case(
        "options-with-body",
        lines(
            b"OPTIONS /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (A(path="/c"), NEXT),
        "OPTIONS body is a body",
    ),
    _case(
        "get-chunked-body",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            body=SMUG_CHUNKED + PROBE,
        ),
        (A(path="/c"), NEXT),
        "chunked GET body",
    ),
    # -- smuggling: refused requests' bodies are never parsed as requests -------------------
    _case(
        "refused-cl-body",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: evil.com",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (BLOCKED, NEXT),
        "discarded body (contract §2)",
        alt=[BLOCKED],
    ),
    _case(
        "refused-get-cl-body",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: evil.com",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (BLOCKED, NEXT),
        "CL.0: a server that ignores a GET body on an early response",
        alt=[BLOCKED],
    ),
    _case(
        "refused-chunked-body",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: evil.com",
            b"Transfer-Encoding: chunked",
            body=SMUG_CHUNKED + PROBE,
        ),
        (BLOCKED, NEXT),
        "discarded or closed",
        alt=[BLOCKED],
    ),
    _case(
        "malformed-cl-body",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: evil.com:",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (R400, NEXT),
        "400 from the gateway, body discarded",
        alt=[R400],
    ),
    _case(
        "mismatch-cl-body",
        lines(
            b"POST http://evil.com/ HTTP/1.1",
            b"Host: www.acme.com",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (R400, NEXT),
        "authority_mismatch, body discarded",
        alt=[R400],
    ),
    _case(
        "connect-with-body",
        lines(b"CONNECT www.acme.com:443 HTTP/1.1", b"Host: www.acme.com:443", body=SMUG),
        R405,
        "no tunnel: the bytes after CONNECT are not a request",
        alt=[(R405, R400)],
    ),
    _case(
        "refused-big-cl",
        lines(b"POST /c HTTP/1.1", b"Host: evil.com", b"Content-Length: 1000000", body=SMUG),
        BLOCKED,
        "over the discard limit: answer then close, never parse the body",
    ),
    _case(
        "refused-expect-100",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: evil.com",
            b"Expect: 100-continue",
            b"Content-Length: %d" % len(SMUG),
            body=SMUG + PROBE,
        ),
        (BLOCKED, NEXT),
        "no 100 Continue for a refusal; the body that follows anyway is discarded or the connection closed",
        alt=[BLOCKED],
    ),
    _case(
        "refused-upgrade",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: evil.com",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            body=SMUG,
        ),
        BLOCKED,
        "no upgrade on a refusal: the bytes after it are not a new request",
        alt=[(BLOCKED, R400)],
    ),
    _case(
        "h2c-upgrade-allowed",
        lines(
            b"GET /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            b"Connection: Upgrade, HTTP2-Settings, close",
        ),
        A(path="/c"),
        "h2c smuggling (Bishop Fox 2020): Upgrade/HTTP2-Settings never reach the upstream",
    ),
    # -- smuggling: chunk sizes (RFC 9112 7.1: chunk-size = 1*HEXDIG) --------------------------
    _case(
        "chunk-ext",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            body=b"5;ext=1\r\nhello\r\n0\r\n\r\n" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "extensions are ignored",
    ),
    _case(
        "chunk-upper-hex",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            body=b"A\r\n0123456789\r\n0\r\n\r\n" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "HEXDIG is case-insensitive",
    ),
    _case(
        "chunk-zero-padded",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            body=b"0005\r\nhello\r\n0\r\n\r\n" + PROBE,
        ),
        (A(path="/c"), NEXT),
        "leading zeros",
    ),
    _case(
        "chunk-0x",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"0x5\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "strtol reads 0x5 as 5",
    ),
    _case(
        "chunk-minus",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"-5\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "sign",
    ),
    _case(
        "chunk-plus",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"+5\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "int('+5', 16) == 5",
    ),
    _case(
        "chunk-underscore",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"0_5\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "int('0_5', 16) == 5",
    ),
    _case(
        "chunk-leading-space",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b" 5\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "space before size",
    ),
    _case(
        "chunk-space-ext",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
        ),
        A(path="/c"),
        "BWS before ';'",
        alt=[R400],
    ),
    _case(
        "chunk-empty-size",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "missing size",
    ),
    _case(
        "chunk-overflow",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "2**64+5 wraps to 5",
        alt=[R413],
    ),
    _case(
        "chunk-huge",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "overflow",
        alt=[R413],
    ),
    _case(
        "chunk-too-long-data",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"3\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "data longer than its size",
    ),
    _case(
        "chunk-no-crlf-after-data",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"5\r\nhelloXX0\r\n\r\n" + SMUG,
        ),
        R400,
        "missing CRLF after data",
    ),
    _case(
        "chunk-bare-lf",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"5\nhello\n0\n\n" + SMUG,
        ),
        R400,
        "bare LF in chunked framing (TERM.SRV)",
        alt=[A(path="/c")],
    ),
    _case(
        "chunk-bare-cr",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"5\rhello\r0\r\r" + SMUG,
        ),
        R400,
        "bare CR in chunked framing",
    ),
    _case(
        "chunk-nul-ext",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"5;a=\x00\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "NUL in extension",
    ),
    _case(
        "chunk-lf-in-ext",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            b"Connection: close",
            body=b"5;a\nb\r\nhello\r\n0\r\n\r\n" + SMUG,
        ),
        R400,
        "LF inside an extension (chunk-ext desync, 2024)",
    ),
    _case(
        "chunk-trailer-host",
        lines(
            b"POST /c HTTP/1.1",
            b"Host: www.acme.com",
            b"Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0\r\nHost: evil.com\r\nX-Forwarded-Host: evil.com\r\nContent-Length: 99\r\n\r\n"
            + PROBE,
        ),
        (A(path="/c"), NEXT),
        "trailer fields never become header fields upstream",
        alt=[R400],
    ),
    # -- pipelining (contract §2: every request decided on its own) -------------------------
    _case(
        "pipeline-mixed",
        b"GET /p1 HTTP/1.1\r\nHost: www.acme.com\r\n\r\n"
        b"GET /p2 HTTP/1.1\r\nHost: evil.com\r\n\r\n"
        b"GET /p3 HTTP/1.1\r\nHost: a.shop.acme.com\r\n\r\n"
        b"GET /p4 HTTP/1.1\r\nHost: bad..host\r\n\r\n" + PROBE,
        (A(path="/p1"), BLOCKED, A("a.shop.acme.com", "/p3"), R400, NEXT),
        "one decision per request",
    ),
    _case(
        "pipeline-parser-error-closes",
        b"GET /p1 HTTP/1.1\r\nHost: www.acme.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: www.acme.com\r\nHost: evil.com\r\n\r\n"
        + SMUG,
        (A(path="/p1"), R400),
        "a request the parser refuses closes the connection: nothing after it is read",
    ),
    _case(
        "pipeline-bad-line-closes",
        b"GET /p1 HTTP/1.1\r\nHost: www.acme.com\r\n\r\nG@T /p2 HTTP/1.1\r\nHost: www.acme.com\r\n\r\n"
        + SMUG,
        (A(path="/p1"), R400),
        "bad method token: close",
    ),
]


# -- the live gateways -----------------------------------------------------------------------

SPOOF_NAMES = frozenset(
    {
        "x-forwarded-server", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-scheme",
        "x-forwarded-ssl", "x-original-host", "x-original-url", "x-rewrite-url", "x-host",
        "x-http-host-override", "x-real-ip", "forwarded",
        # hop-by-hop (RFC 9110 7.6.1) and h2c smuggling
        "upgrade", "http2-settings", "keep-alive", "proxy-connection", "te", "trailer",
    }
)  # fmt: skip
TOKEN = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")


@dataclass
class Live:
    parser: str
    gw: Gateway
    answered: int = 0  # final (non-1xx) responses read from the public listener
    seq: int = 0
    observed: dict[str, list[str]] = field(default_factory=dict)


def _config(upstream_url: str) -> dict[str, object]:
    return {
        "environments": [
            {
                "name": "app",
                "hostname": "app.internal.example",
                "secure_endpoints": [
                    "www.acme.com",
                    "acme.com:8443",
                    "*.shop.acme.com",
                    "[2001:db8::1]",
                ],
                "upstreams": [upstream_url],
            }
        ],
        # A request the parser never finishes (a lone-LF header block, say) is closed after
        # this instead of 10 s; it keeps the corpus fast.
        "timeouts": {"header_s": 2.0},
    }


PARSER_ENV = {"c": {}, "python": {"AIOHTTP_NO_EXTENSIONS": "1"}}


@pytest.fixture(scope="module", params=["c", "python"])
def live(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    parser = request.param
    gw = start_gateway(
        _config(upstream.url), tmp_path_factory.mktemp(f"adv-{parser}"), env=PARSER_ENV[parser]
    )
    try:
        yield Live(parser, gw)
    finally:
        gw.stop()


def test_parser_selection_is_real() -> None:
    """AIOHTTP_NO_EXTENSIONS=1 really swaps llhttp for the pure-Python parser in a child
    started the way start_gateway starts the gateway (same interpreter, env merged)."""
    code = "import aiohttp.http_parser as p; print(p.HttpRequestParser.__module__)"
    seen = {}
    for parser, env in PARSER_ENV.items():
        out = subprocess.run(
            [PY, "-c", code], env={**_os_environ(), **env}, capture_output=True, text=True
        )
        seen[parser] = out.stdout.strip()
    assert seen == {"c": "aiohttp._http_parser", "python": "aiohttp.http_parser"}, seen


def _os_environ() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.pop("AIOHTTP_NO_EXTENSIONS", None)
    return env


@dataclass
class Exchange:
    responses: list[RawResponse]
    interim: list[RawResponse]
    timed_out: bool
    leftover: bytes


def exchange(port: int, data: bytes, timeout: float) -> Exchange:
    """Send the bytes, read responses until the server closes (every case ends with a
    closing request or a refusal that closes) or ``timeout`` passes."""
    out: list[RawResponse] = []
    interim: list[RawResponse] = []
    timed_out = False
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # The gateway may close before reading everything; then read what it said.
        with contextlib.suppress(OSError):
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                r = read_response(s, buf)
            except TimeoutError:
                timed_out = True
                break
            except (ConnectionError, OSError):
                break
            (interim if 100 <= r.status < 200 else out).append(r)
    return Exchange(out, interim, timed_out, bytes(buf))


def classify(r: RawResponse) -> Out | str:
    if r.status == 200:
        try:
            seen = r.json()
        except ValueError:
            return f"200 not from the echo upstream: {r.body[:80]!r}"
        hosts = [v for k, v in seen["headers"] if k.lower() == "host"]
        return Out("allowed", hosts[0] if len(hosts) == 1 else repr(hosts), seen["path"])
    kind = STATUS_KIND.get(r.status)
    return Out(kind) if kind else f"status {r.status}: {r.body[:80]!r}"


def matches(got: list[Out | str], want: tuple[Out, ...]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if not isinstance(g, Out) or g.kind != w.kind:
            return False
        if w.kind == "allowed" and (g.host != w.host or (w.path and g.path != w.path)):
            return False
    return True


def check_upstream_view(r: RawResponse, what: str) -> None:
    """What the echo upstream received for an allowed request (contract §2 rewriting)."""
    seen = r.json()
    headers: list[list[str]] = seen["headers"]
    names = [k.lower() for k, _ in headers]
    hosts = [v for k, v in headers if k.lower() == "host"]
    xfh = [v for k, v in headers if k.lower() == "x-forwarded-host"]
    assert len(hosts) == 1 and xfh == hosts, f"{what}: upstream Host {hosts}, XFH {xfh}"
    for k, v in headers:
        assert TOKEN.fullmatch(k), f"{what}: upstream got a non-token header name {k!r}"
        assert "_" not in k, f"{what}: underscore header {k!r} reached the upstream"
        assert not set(v) & {"\r", "\n", "\x00"}, f"{what}: control byte in {k}: {v!r}"
    assert not SPOOF_NAMES & set(names), f"{what}: {sorted(SPOOF_NAMES & set(names))} forwarded"
    rid = [v for k, v in headers if k.lower() == "x-request-id"]
    assert len(rid) == 1 and rid[0] != "client-chosen", f"{what}: X-Request-ID {rid}"


def run_case(live: Live, case: Case) -> list[Out | str]:
    port = live.gw.port()
    ex = exchange(port, case.data, case.timeout)
    live.answered += len(ex.responses)
    got = [classify(r) for r in ex.responses]
    live.observed[case.name] = [str(g) for g in got] + (["<timeout>"] if ex.timed_out else [])
    wants = [case.expect, *case.alt]
    problems = []
    if ex.timed_out:
        problems.append(f"no close after {case.timeout}s (the gateway neither answered nor closed)")
    if not any(matches(got, w) for w in wants):
        problems.append(
            f"got {[str(g) for g in got]}, want {' or '.join(str([str(o) for o in w]) for w in wants)}"
        )
    for i, r in enumerate(ex.responses):
        assert r.status < 500 or r.status == 503, f"{case.name}: response {i} is {r.status}"
        assert b"SMUGGLED" not in r.body, f"{case.name}: a smuggled request was answered"
        if r.status == 200 and isinstance(got[i], Out):
            check_upstream_view(r, case.name)
        if r.status in (400, 405, 413, 503):
            assert r.header("Cache-Control") == "no-store", f"{case.name}: refusal {i} cacheable"
    if ex.interim:
        # 100 Continue only ever for a request the gateway forwards.
        assert all(isinstance(g, Out) and g.kind == "allowed" for g in got[:1]), case.name
    assert not problems, (
        f"{case.name} ({live.parser} parser): {'; '.join(problems)}\n  why: {case.why}\n  sent: {case.data[:300]!r}"
    )
    return got


def probe(live: Live) -> None:
    """A fresh request after each case: answered for its own path, so nothing the case
    sent is left over on the gateway's pooled upstream connections."""
    live.seq += 1
    path = f"/probe-{live.seq}"
    ex = exchange(live.gw.port(), host_req(b"www.acme.com", path.encode()), 5.0)
    live.answered += len(ex.responses)
    assert len(ex.responses) == 1, f"probe after case: {ex}"
    (r,) = ex.responses
    assert r.status == 200 and r.json()["path"] == path, (r.status, r.body[:200])
    assert b"SMUGGLED" not in r.body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus(live: Live, case: Case) -> None:
    try:
        run_case(live, case)
    finally:
        probe(live)


def test_gateway_survived_and_counted_every_request(live: Live) -> None:
    """After the corpus: still alive, and allowed + blocked = every response it gave.

    Every case ends in a response or a clean close, and the corpus has no request the
    gateway counts without answering (no ``blocked_response: close`` here), so the equality
    is exact: a refused-by-parser request counts as bad_request/duplicate_host/... too.
    """
    assert live.gw.proc.popen.poll() is None, live.gw.proc.output()
    m = live.gw.metrics()
    counted = metric_sum(m, "gateway_requests_allowed_total") + metric_sum(
        m, "gateway_requests_blocked_total"
    )
    assert counted == live.answered, (counted, live.answered)
    assert "Traceback" not in live.gw.proc.output(), live.gw.proc.output()
    out = Path(live.gw.config_path).with_name(f"observed-{live.parser}.json")
    out.write_text(json.dumps(live.observed, indent=1))
