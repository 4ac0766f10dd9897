"""Adversarial corpus against the live gateway, under both of aiohttp's HTTP parsers.

Host-header attacks (duplicate Host, obs-fold, absolute-form and userinfo tricks, override
headers, control and non-ASCII bytes, over-long values, IPv6/IPv4/port tricks) and
request-smuggling shapes (CL.TE, TE.CL, TE.TE obfuscation, bad Content-Length, bad chunk
sizes, bare LF/CR) after James Kettle's "HTTP Desync Attacks" (2019) and "Browser-Powered
Desync Attacks" (2022), sent as raw bytes on real sockets to the gateway started by its
CLI, once with llhttp (aiohttp's C parser) and once with AIOHTTP_NO_EXTENSIONS=1.

Each case lists what contract §2 requires, one outcome per response on its connection:
allowed (200 from the echo upstream, which must have seen exactly the normalised Host),
blocked (503 unknown_host), 400, 405 (CONNECT), 413 (body too large). For every case:
- the connection ends (answered, or closed) in a few seconds; no 500;
- no hidden request is ever run: ``SMUGGLED`` appears only in bytes that must never reach
  the upstream as a request, path or field (bodies, refused targets, X-Original-URL...),
  so it must never come back (the echo upstream returns the path and headers it saw);
- the upstream never sees a client's override header (X-Forwarded-Host, X-Host,
  Forwarded, any name with ``_``...) and its Host is exactly the normalised allowed host;
- allowed + blocked counters grow by exactly the number of responses;
- a fresh ``GET /probe-N`` afterwards is answered for ``/probe-N`` (nothing was left on
  the gateway's pooled upstream connections: no response-queue poisoning).
After the corpus the process is alive and logged no error. No case accepts a close
without a response: this config has no ``blocked_response: close``, and a request the
parser refuses gets its 400 before the close.

Where RFC 9112 leaves a recipient a choice (a lone LF as line end, a leading empty line,
``HTTP/1.2``) every safe answer is accepted and listed as ``alt``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from support import PY, Gateway, RawResponse, Upstream, metric_sum, read_response, start_gateway

# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    # "allowed" | "blocked" | "400" | "405" | "413" | "505" | "ws-refused" | "upstream-NNN"
    kind: str
    host: str | None = None  # allowed: the exact Host the upstream must have seen
    path: str | None = None  # allowed: the path the upstream must have seen, when it matters
    body: int | None = None  # allowed: the body size the upstream must have read

    def __str__(self) -> str:
        if self.kind != "allowed":
            return self.kind
        extra = "".join(f" {x}" for x in (self.path, self.body) if x is not None)
        return f"allowed({self.host}{extra})"


def A(host: str = "www.acme.com", path: str | None = None, body: int | None = None) -> Out:
    return Out("allowed", host, path, body)


BLOCKED = Out("blocked")
R400 = Out("400")
R405 = Out("405")
R413 = Out("413")
R505 = Out("505")  # HTTP Version Not Supported: nginx's answer to a major version other than 1
# An Upgrade: websocket the upstream did not accept: the gateway's own 502 (no tunnel opened).
WS_REFUSED = Out("ws-refused")
# Forwarded, and the upstream (aiohttp, C parser) refused the bytes itself.
UPSTREAM_400 = Out("upstream-400")
GATEWAY_STATUS = {503: "blocked", 400: "400", 405: "405", 413: "413", 505: "505"}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: tuple[Out, ...]
    why: str
    # Other outcome sequences that also satisfy the contract (RFC 9112 "MAY" choices).
    alt: tuple[tuple[Out, ...], ...] = ()


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


def req(*field_lines: bytes, body: bytes = b"") -> bytes:
    """A request from explicit lines (request line first), each without its CRLF."""
    return b"".join(ln + b"\r\n" for ln in field_lines) + b"\r\n" + body


def get(*field_lines: bytes) -> bytes:
    """GET /c to www.acme.com, closing, with extra field lines."""
    return req(b"GET /c HTTP/1.1", b"Host: www.acme.com", *field_lines, b"Connection: close")


def post(*field_lines: bytes, body: bytes = b"", host: bytes = b"www.acme.com") -> bytes:
    return req(b"POST /c HTTP/1.1", b"Host: " + host, *field_lines, body=body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


# A complete request that must never be parsed as one: if it ever is, the echo upstream's
# answer names /SMUGGLED and the corpus-wide check fails.
SMUG = b"GET /SMUGGLED HTTP/1.1\r\nHost: www.acme.com\r\nContent-Length: 0\r\n\r\n"
SMUG_CHUNKED = chunk(SMUG) + b"0\r\n\r\n"
# The legitimate next request on the same connection; it closes, so reads end promptly.
NEXT_REQ = b"GET /next HTTP/1.1\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n"
NEXT = A(path="/next")
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
CLOSE = b"Connection: close"
TE = b"Transfer-Encoding: chunked"

# -- the corpus ------------------------------------------------------------------------------

# fmt: off
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
    # -- Host header shape (contract §2 step 1; RFC 9112 §3.2, §5) ----------------------------
    _case("no-space-after-colon", req(b"GET /c HTTP/1.1", b"Host:www.acme.com", CLOSE), A(), "OWS is optional"),
    _case("trailing-spaces", req(b"GET /c HTTP/1.1", b"Host: www.acme.com   ", CLOSE), A(), "OWS is not part of the value (RFC 9110 5.5)"),
    _case("tabs-around", req(b"GET /c HTTP/1.1", b"Host:\twww.acme.com\t", CLOSE), A(), "HTAB is OWS"),
    _case("odd-case-name", req(b"GET /c HTTP/1.1", b"hOsT: www.acme.com", CLOSE), A(), "field names are case-insensitive"),
    _case("duplicate-same", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Host: www.acme.com", CLOSE), R400, "exactly one Host, even if equal"),
    _case("duplicate-case", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"host: evil.com", CLOSE), R400, "first-vs-last Host: the gateway checks one, the app reads the other"),
    _case("duplicate-evil-first", req(b"GET /c HTTP/1.1", b"HOST: evil.com", b"Host: www.acme.com", CLOSE), R400, "first-vs-last Host"),
    _case("duplicate-apart", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"X-A: 1", b"hOST: evil.com", CLOSE), R400, "not adjacent"),
    _case("duplicate-empty", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Host:", CLOSE), R400, "an empty second Host still counts"),
    _case("missing-1.1", req(b"GET /c HTTP/1.1", CLOSE), R400, "HTTP/1.1 without Host"),
    _case("missing-1.0", req(b"GET /c HTTP/1.0"), R400, "never fall back to the server's own name"),
    _case("missing-absolute-form", req(b"GET http://www.acme.com/c HTTP/1.1", CLOSE), R400, "absolute-form does not replace Host (contract step 1)"),
    _case("http10-with-host", req(b"GET /c HTTP/1.0", b"Host: www.acme.com"), A(), "HTTP/1.0 with Host"),
    _case("empty-value", req(b"GET /c HTTP/1.1", b"Host:", CLOSE), R400, "empty"),
    _case("space-before-colon", req(b"GET /c HTTP/1.1", b"Host : evil.com", CLOSE), R400, "RFC 9112 5.1: MUST answer 400"),
    _case("space-before-colon-second", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Host : evil.com", CLOSE), R400, "a lax parser keeps a second field named 'Host '"),
    _case("tab-before-colon", req(b"GET /c HTTP/1.1", b"Host\t: evil.com", CLOSE), R400, "RFC 9112 5.1"),
    _case("no-colon", req(b"GET /c HTTP/1.1", b"Host www.acme.com", CLOSE), R400, "not a field line"),
    _case("empty-name", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b": evil.com", CLOSE), R400, "empty field name"),
    _case("h2-pseudo-header", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b":authority: evil.com", CLOSE), R400, "HTTP/2 :authority downgrade (H2.TE-style)"),
    _case("nul-in-name", req(b"GET /c HTTP/1.1", b"Ho\x00st: evil.com", b"Host: www.acme.com", CLOSE), R400, "C-string truncation of the name"),
    _case("space-in-name", req(b"GET /c HTTP/1.1", b"X Host: evil.com", b"Host: www.acme.com", CLOSE), R400, "not a token"),
    _case("non-ascii-name", req(b"GET /c HTTP/1.1", "Hos\u0163: evil.com".encode(), b"Host: www.acme.com", CLOSE), R400, "not a token"),
    _case("obs-fold-host", req(b"GET /c HTTP/1.1", b"Host: evil.com", b" www.acme.com", CLOSE), R400, "obs-fold: a folding front-end sees 'evil.com www.acme.com', others two lines"),
    _case("obs-fold-host-tab", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"\tevil.com", CLOSE), R400, "obs-fold with HTAB"),
    # Unfolding to SP (RFC 9112 5.2) leaves "1 Host: evil.com" as X-A's value: also safe.
    _case("obs-fold-hides-host", req(b"GET /c HTTP/1.1", b"X-A: 1", b" Host: evil.com", b"Host: www.acme.com", CLOSE), R400, "a fold that hides a Host line from some parsers", alt=[A()]),
    # RFC 9112 2.2: whitespace before the first field line: reject, or ignore that line.
    _case("leading-space-first-field", req(b"GET /c HTTP/1.1", b" Host: evil.com", b"Host: www.acme.com", CLOSE), R400, "reject or ignore", alt=[A()]),
    # -- CR, LF, NUL (RFC 9110 5.5 / RFC 9112 2.2: reject, or replace with SP) ----------------
    _case("bare-lf-two-hosts", b"GET /c HTTP/1.1\r\nHost: www.acme.com\nHost: evil.com\r\nConnection: close\r\n\r\n", R400, "one Host line to a CRLF-only parser, two to an LF one"),
    _case("bare-lf-two-hosts-evil-first", b"GET /c HTTP/1.1\r\nHost: evil.com\nHost: www.acme.com\r\nConnection: close\r\n\r\n", R400, "same, reversed"),
    _case("bare-lf-in-other-field", b"GET /c HTTP/1.1\r\nX-A: 1\nHost: evil.com\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n", R400, "a Host hidden after a lone LF in another field's value"),
    _case("bare-cr-in-other-field", b"GET /c HTTP/1.1\r\nX-A: 1\rHost: evil.com\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n", R400, "a Host hidden after a lone CR", alt=[A()]),
    _case("nul-in-other-field", b"GET /c HTTP/1.1\r\nX-A: 1\x00Host: evil.com\r\nHost: www.acme.com\r\nConnection: close\r\n\r\n", R400, "NUL in a value"),
    _case("bare-lf-everywhere", b"GET /c HTTP/1.1\nHost: www.acme.com\nConnection: close\n\n", A(), "RFC 9112 2.2: a recipient MAY take a lone LF as a line end", alt=[R400]),
    _case("bare-cr-everywhere", b"GET /c HTTP/1.1\rHost: www.acme.com\rConnection: close\r\r\r\n\r\n", R400, "lone CR: MUST reject or replace"),
    # -- override headers: never believed, never forwarded (contract §2) ---------------------
    _case(
        "override-headers-allowed",
        get(b"X-Forwarded-Host: evil.com", b"x-fOrWaRdEd-hOsT: evil.com", b"X-Host: evil.com", b"X-Original-Host: evil.com",
            b"X-HTTP-Host-Override: evil.com", b"Forwarded: for=1.2.3.4;host=evil.com;proto=https", b"X-Forwarded-Server: evil.com",
            b"X-Forwarded-Port: 1", b"X-Forwarded-Proto: gopher", b"X-Forwarded-Prefix: /evil", b"X-Forwarded-Scheme: evil",
            b"X-Forwarded-Ssl: on", b"X-Original-URL: /SMUGGLED", b"X-Rewrite-URL: /SMUGGLED", b"X-Real-IP: 6.6.6.6",
            b"X_Forwarded_Host: evil.com", b"X-Forwarded_Host: evil.com", b"X_Host: evil.com", b"X-Request-ID: client-chosen"),
        A(path="/c"),
        "Host-header poisoning through override headers (reset links, cache keys, X-Original-URL ACL bypass)",
    ),
    _case("xfh-from-evil", req(b"GET /c HTTP/1.1", b"Host: evil.com", b"X-Forwarded-Host: www.acme.com", CLOSE), BLOCKED, "the override never decides"),
    _case("x-host-from-evil", req(b"GET /c HTTP/1.1", b"Host: evil.com", b"X-Host: www.acme.com", CLOSE), BLOCKED, "the override never decides"),
    _case("forwarded-from-evil", req(b"GET /c HTTP/1.1", b"Host: evil.com", b"Forwarded: host=www.acme.com", CLOSE), BLOCKED, "the override never decides"),
    _case("underscore-xfh-from-evil", req(b"GET /c HTTP/1.1", b"Host: evil.com", b"X_Forwarded_Host: www.acme.com", CLOSE), BLOCKED, "WSGI reads _ as -"),
    _case("xfh-without-host", req(b"GET /c HTTP/1.1", b"X-Forwarded-Host: www.acme.com", CLOSE), R400, "no Host is missing_host whatever XFH says"),
    _case("connection-nominates-host", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Connection: close, Host, X-Forwarded-Host"), A(), "a Connection token must not strip the gateway's own Host/XFH"),
    _case("connection-nominates-cl", post(b"Content-Length: 5", b"Connection: Content-Length, close", body=b"hello"), A(path="/c", body=5), "hop-by-hop abuse: the body keeps its framing upstream"),
    # -- absolute-form (contract §2 step 4) --------------------------------------------------
    _case("abs-same", host_req(b"www.acme.com", b"http://www.acme.com/a?x=1"), A(path="/a?x=1"), "origin form upstream"),
    _case("abs-case-dot", host_req(b"www.acme.com", b"http://WWW.ACME.COM./a"), A(path="/a"), "normalised the same way"),
    _case("abs-default-port", host_req(b"www.acme.com", b"http://www.acme.com:80/a"), A(path="/a"), "scheme default port dropped"),
    _case("abs-host-default-port", host_req(b"www.acme.com:80", b"http://www.acme.com/a"), A(path="/a"), "port 80 both"),
    _case("abs-no-path", host_req(b"www.acme.com", b"http://www.acme.com"), A(path="/"), "empty path is /"),
    _case("abs-query-no-path", host_req(b"www.acme.com", b"http://www.acme.com?q=1"), A(path="/?q=1"), "query without path"),
    _case("abs-https-ported", host_req(b"acme.com:8443", b"https://acme.com:8443/a"), A("acme.com:8443", "/a"), "explicit port both"),
    _case("abs-ipv6", host_req(b"[2001:db8::1]", b"http://[2001:DB8::1]:80/a"), A("[2001:db8::1]", "/a"), "RFC 5952 both"),
    _case("abs-upper-scheme", host_req(b"www.acme.com", b"HTTP://www.acme.com/a"), A(path="/a"), "schemes are case-insensitive", alt=[R400]),
    _case("abs-empty-port", host_req(b"www.acme.com", b"http://www.acme.com:/a"), R400, "'good.com:' is malformed", alt=[A(path="/a")]),
    # absolute-URI has no fragment (RFC 9112 3.2.2): refuse it, or forward the path it
    # really has ("/"), never text from the fragment (a front-end ACL sees path "/").
    _case("abs-fragment-at", host_req(b"www.acme.com", b"http://www.acme.com#@evil.com/a"), R400, "WHATWG and RFC 3986 both end the authority at '#'", alt=[A(path="/")]),
    _case("abs-fragment-path", host_req(b"www.acme.com", b"http://www.acme.com#/SMUGGLED"), R400, "the fragment is not the path", alt=[A(path="/")]),
    _case("abs-query-fragment", host_req(b"www.acme.com", b"http://www.acme.com?a#/SMUGGLED"), R400, "the fragment is not the path", alt=[A(path="/?a")]),
    _case("origin-fragment", host_req(b"www.acme.com", b"/c#/SMUGGLED"), R400, "origin-form has no fragment either", alt=[A(path="/c")]),
    _case("origin-double-slash", host_req(b"www.acme.com", b"//evil.com/c"), A(path="//evil.com/c"), "a path, not an authority: the Host decides", alt=[R400]),
    _case("target-at", host_req(b"www.acme.com", b"@evil.com/c"), R400, "neither origin- nor absolute-form"),
    _case("abs-mismatch", host_req(b"www.acme.com", b"http://evil.com/a"), R400, "routing-based SSRF: the proxy reads the URL, the check the Host"),
    _case("abs-mismatch-evil-host", host_req(b"evil.com", b"http://www.acme.com/a"), R400, "authority_mismatch"),
    _case("abs-https-vs-80", host_req(b"www.acme.com", b"https://www.acme.com/a"), R400, "443 vs 80"),
    _case("abs-port-mismatch", host_req(b"www.acme.com", b"http://www.acme.com:8080/a"), R400, "8080 vs 80"),
    _case("abs-userinfo-evil", host_req(b"www.acme.com", b"http://www.acme.com@evil.com/a"), R400, "the URL's host is evil.com"),
    _case("abs-userinfo-evil-host-evil", host_req(b"evil.com", b"http://www.acme.com@evil.com/a"), R400, "userinfo: malformed"),
    _case("abs-userinfo-good", host_req(b"www.acme.com", b"http://evil.com@www.acme.com/a"), R400, "userinfo: malformed"),
    _case("abs-user-pass", host_req(b"www.acme.com", b"http://u:p@www.acme.com/a"), R400, "userinfo: malformed"),
    _case("abs-backslash", host_req(b"www.acme.com", b"http://www.acme.com\\@evil.com/a"), R400, "WHATWG: '\\' ends the authority, RFC 3986: userinfo"),
    _case("abs-encoded-at", host_req(b"www.acme.com", b"http://www.acme.com%40evil.com/a"), R400, "percent in the authority"),
    _case("abs-idn-raw", host_req(b"www.acme.com", "http://www.acmé.com/a".encode()), R400, "raw UTF-8 authority"),
    _case("abs-bad-punycode", host_req(b"www.acme.com", b"http://xn--a.com/a"), R400, "an A-label that does not decode (mismatch anyway)"),
    _case("abs-bad-punycode-same", host_req(b"xn--a.com", b"http://xn--a.com/a"), BLOCKED, "LDH-valid, not listed", alt=[R400]),
    _case("abs-empty-authority", host_req(b"www.acme.com", b"http:///a"), R400, "empty authority"),
    _case("abs-ftp", host_req(b"www.acme.com", b"ftp://www.acme.com/a"), R400, "not http(s)"),
    _case("abs-one-slash", host_req(b"www.acme.com", b"http:/www.acme.com/a"), R400, "not absolute-form"),
    _case("authority-form-get", host_req(b"www.acme.com", b"www.acme.com:80"), R400, "authority-form is for CONNECT only"),
    _case("connect", req(b"CONNECT www.acme.com:443 HTTP/1.1", b"Host: www.acme.com:443", CLOSE), R405, "CONNECT is refused with 405: never a tunnel"),
    _case("connect-evil", req(b"CONNECT evil.com:443 HTTP/1.1", b"Host: evil.com:443", CLOSE), R405, "CONNECT: 405"),
    # Forwarded as "OPTIONS *" (RFC 9112 3.2.4), or refused: never an internal error.
    _case("asterisk-options", req(b"OPTIONS * HTTP/1.1", b"Host: www.acme.com", CLOSE), A(path="*"), "asterisk-form", alt=[R400, UPSTREAM_400]),
    _case("asterisk-get", req(b"GET * HTTP/1.1", b"Host: www.acme.com", CLOSE), R400, "asterisk-form is for OPTIONS only", alt=[A(path="*"), UPSTREAM_400]),
    # -- request line (RFC 9112 §3) ------------------------------------------------------------
    _case("http09", b"GET /c\r\n\r\n", R400, "HTTP/0.9 has no fields, hence no Host"),
    _case("http2-version", req(b"GET /c HTTP/2.0", b"Host: www.acme.com", CLOSE), R400, "HTTP/2 is out of scope: not an HTTP/1 request", alt=[R505]),
    _case("http99", req(b"GET /c HTTP/9.9", b"Host: www.acme.com", CLOSE), R400, "unknown major version", alt=[R505]),
    _case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", R400, "h2 prior knowledge on an h1 listener", alt=[R505]),
    _case("http12", req(b"GET /c HTTP/1.2", b"Host: www.acme.com", CLOSE), A(), "RFC 9110 2.5: a higher minor is served as 1.1", alt=[R400]),
    _case("version-lowercase", req(b"GET /c http/1.1", b"Host: www.acme.com", CLOSE), R400, "HTTP-name is case-sensitive"),
    _case("extra-word", req(b"GET /c HTTP/1.1 x", b"Host: www.acme.com", CLOSE), R400, "four words"),
    _case("space-in-target", req(b"GET /c /SMUGGLED HTTP/1.1", b"Host: www.acme.com", CLOSE), R400, "space in the target"),
    _case("nul-in-target", req(b"GET /c\x00/SMUGGLED HTTP/1.1", b"Host: www.acme.com", CLOSE), R400, "NUL in the target"),
    _case("nul-in-method", req(b"G\x00ET /c HTTP/1.1", b"Host: www.acme.com", CLOSE), R400, "NUL in the method"),
    _case("double-space", req(b"GET  /c HTTP/1.1", b"Host: www.acme.com", CLOSE), R400, "RFC 9112 3: single SP", alt=[A()]),
    _case("leading-crlf", b"\r\n" + req(b"GET /c HTTP/1.1", b"Host: www.acme.com", CLOSE), A(), "RFC 9112 2.2: SHOULD ignore one leading empty line", alt=[R400]),
    _case("non-ascii-target", req("GET /ç HTTP/1.1".encode(), b"Host: www.acme.com", CLOSE), R400, "raw non-ASCII in the target", alt=[A(), UPSTREAM_400]),
    _case("long-target", req(b"GET /" + b"a" * 9000 + b" HTTP/1.1", b"Host: www.acme.com", CLOSE), R400, "request line over 8 KB"),
    _case("too-many-fields", get(*[b"X-%d: y" % i for i in range(200)]), R400, "over limits.max_headers"),
    _case("long-other-field", get(b"X-Big: " + b"a" * 9000), R400, "a field over 8 KB"),
    # -- smuggling: CL.TE / TE.CL (RFC 9112 6.1: both present is an attack: 400, close) -------
    _case("cl-te", post(b"Content-Length: %d" % (5 + len(SMUG)), TE, body=b"0\r\n\r\n" + SMUG), R400, "CL.TE: a CL front-end forwards SMUG as body, a TE back-end runs it"),
    _case("te-cl", post(TE, b"Content-Length: 3", body=SMUG_CHUNKED), R400, "TE.CL"),
    _case("cl-te-evil-host", post(b"Content-Length: 5", TE, body=b"0\r\n\r\n", host=b"evil.com"), R400, "CL+TE whatever the Host"),
    _case("cl-te-case", post(b"content-length: 5", b"TRANSFER-ENCODING: CHUNKED", body=b"0\r\n\r\n" + SMUG), R400, "case variants"),
    _case("cl-zero-te", post(b"Content-Length: 0", TE, body=SMUG_CHUNKED), R400, "CL: 0 with TE"),
    # -- smuggling: TE.TE, Transfer-Encoding obfuscation (Kettle 2019) -------------------------
    _case("te-xchunked", post(b"Transfer-Encoding: xchunked", body=SMUG_CHUNKED), R400, "unknown coding"),
    _case("te-xchunked-cl", post(b"Transfer-Encoding: xchunked", b"Content-Length: %d" % len(SMUG_CHUNKED), body=SMUG_CHUNKED), R400, "unknown coding plus CL"),
    _case("te-chunked-identity", post(b"Transfer-Encoding: chunked, identity", body=SMUG_CHUNKED), R400, "chunked not final: 400 (RFC 9112 6.3)"),
    _case("te-identity-chunked", post(b"Transfer-Encoding: identity, chunked", CLOSE, body=HELLO_CHUNKED), R400, "identity is no longer a coding", alt=[A(path="/c", body=5)]),
    _case("te-twice-chunked-identity", post(TE, b"Transfer-Encoding: identity", body=SMUG_CHUNKED), R400, "two TE fields: first vs last"),
    _case("te-twice-identity-chunked-cl", post(b"Transfer-Encoding: identity", TE, b"Content-Length: 3", body=SMUG_CHUNKED), R400, "two TE fields plus CL"),
    _case("te-twice-chunked", post(TE, TE, CLOSE, body=b"0\r\n\r\n"), R400, "chunked applied twice", alt=[A(path="/c")]),
    _case("te-space-before-colon", post(b"Transfer-Encoding : chunked", b"Content-Length: 3", body=SMUG_CHUNKED), R400, "RFC 9112 5.1"),
    _case("te-tab-value", post(b"Transfer-Encoding:\tchunked", body=HELLO_CHUNKED + NEXT_REQ), (A(path="/c", body=5), NEXT), "HTAB is OWS: plain chunked"),
    _case("te-trailing-space", post(b"Transfer-Encoding: chunked ", body=HELLO_CHUNKED + NEXT_REQ), (A(path="/c", body=5), NEXT), "OWS trimmed: plain chunked"),
    _case("te-upper", post(b"Transfer-Encoding: CHUNKED", body=HELLO_CHUNKED + NEXT_REQ), (A(path="/c", body=5), NEXT), "codings are case-insensitive"),
    _case("te-quoted", post(b'Transfer-Encoding: "chunked"', body=SMUG_CHUNKED), R400, "quoted coding"),
    _case("te-vtab", post(b"Transfer-Encoding: \x0bchunked", body=SMUG_CHUNKED), R400, "VT is not OWS"),
    _case("te-nul", post(b"Transfer-Encoding: chunked\x00", body=SMUG_CHUNKED), R400, "NUL"),
    _case("te-prefix", post(b"Transfer-Encoding: chunk", body=SMUG_CHUNKED), R400, "prefix of chunked"),
    _case("te-trailing-comma", post(b"Transfer-Encoding: chunked,", body=SMUG_CHUNKED), R400, "empty list element"),
    _case("te-kelvin", post("Transfer-Encoding: chun\u212aed".encode(), body=SMUG_CHUNKED), R400, "U+212A lowercases to k"),
    _case("te-obs-fold", post(b"Transfer-Encoding:", b" chunked", b"Content-Length: %d" % len(SMUG_CHUNKED), body=SMUG_CHUNKED), R400, "TE value behind an obs-fold"),
    _case("te-underscore-with-cl", post(b"Transfer_Encoding: chunked", b"Content-Length: %d" % len(SMUG_CHUNKED), body=SMUG_CHUNKED + NEXT_REQ), (A(path="/c", body=len(SMUG_CHUNKED)), NEXT), "not TE to us: CL frames it; the upstream never sees Transfer_Encoding"),
    # RFC 9112 6.1: TE in HTTP/1.0 is faulty framing: process it (or refuse), then close.
    _case("te-http10", req(b"POST /c HTTP/1.0", b"Host: www.acme.com", TE, body=HELLO_CHUNKED + SMUG), A(path="/c", body=5), "then close", alt=[R400]),
    # -- smuggling: Content-Length (RFC 9110 8.6: 1*DIGIT) -----------------------------------
    _case("cl-plus", post(b"Content-Length: +5", body=b"hello" + SMUG), R400, "int('+5') == 5"),
    _case("cl-minus", post(b"Content-Length: -1", body=SMUG), R400, "negative"),
    _case("cl-list", post(b"Content-Length: 5, 5", body=b"hello" + SMUG), R400, "list form"),
    _case("cl-two-numbers", post(b"Content-Length: 5 5", body=b"hello" + SMUG), R400, "two numbers"),
    _case("cl-hex", post(b"Content-Length: 0x5", body=b"hello" + SMUG), R400, "hex"),
    _case("cl-underscore", post(b"Content-Length: 1_0", body=b"helloworld" + SMUG), R400, "int('1_0') == 10"),
    _case("cl-fullwidth", post("Content-Length: ５".encode(), body=b"hello" + SMUG), R400, "int('５') == 5"),
    _case("cl-vtab", post(b"Content-Length:\x0b5", body=b"hello" + SMUG), R400, "VT"),
    _case("cl-empty", post(b"Content-Length:", body=SMUG), R400, "empty"),
    _case("cl-wraps-2-64", post(b"Content-Length: 18446744073709551621", body=b"hello" + SMUG), R400, "2**64+5 is 5 in a uint64", alt=[R413]),
    _case("cl-huge", post(b"Content-Length: " + b"9" * 40, body=SMUG), R400, "overflow", alt=[R413]),
    _case("cl-dup-same", post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello" + SMUG), R400, "two CL fields (RFC 9110 allows merging equal ones; refusing is safer)"),
    _case("cl-dup-diff", post(b"Content-Length: 5", b"content-length: %d" % (5 + len(SMUG)), body=b"hello" + SMUG), R400, "CL.CL"),
    _case("cl-dup-zero", post(b"Content-Length: 0", b"Content-Length: %d" % len(SMUG), body=SMUG), R400, "CL.CL"),
    _case("cl-leading-zeros", post(b"Content-Length: 005", body=b"hello" + NEXT_REQ), (A(path="/c", body=5), NEXT), "1*DIGIT: leading zeros are fine"),
    _case("cl-trailing-ows", post(b"Content-Length: 5 ", body=b"hello" + NEXT_REQ), (A(path="/c", body=5), NEXT), "OWS trimmed"),
    _case("cl-space-before-colon", post(b"Content-Length : %d" % len(SMUG), body=SMUG), R400, "RFC 9112 5.1"),
    _case("cl-over-limit", post(b"Content-Length: 1000000000", body=SMUG), R413, "over max_body_bytes: refused before reading, then close"),
    # Bodies on GET/OPTIONS are bodies (CL.0 desync: a server that ignores them runs SMUG).
    _case("get-with-body", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ), (A(path="/c", body=len(SMUG)), NEXT), "CL.0"),
    _case("options-with-body", req(b"OPTIONS /c HTTP/1.1", b"Host: www.acme.com", b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ), (A(path="/c", body=len(SMUG)), NEXT), "CL.0"),
    _case("get-chunked-body", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", TE, body=SMUG_CHUNKED + NEXT_REQ), (A(path="/c", body=len(SMUG)), NEXT), "chunked GET body"),
    _case("expect-100-allowed", post(b"Expect: 100-continue", b"Content-Length: 5", CLOSE, body=b"hello"), A(path="/c", body=5), "100 then the upstream's answer"),
    # -- smuggling: a refused request's body is never parsed as a request (contract §2) -------
    _case("refused-cl-body", post(b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ, host=b"evil.com"), (BLOCKED, NEXT), "body discarded", alt=[BLOCKED]),
    _case("refused-get-cl-body", req(b"GET /c HTTP/1.1", b"Host: evil.com", b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ), (BLOCKED, NEXT), "CL.0 on an early refusal (Kettle 2022)", alt=[BLOCKED]),
    _case("refused-chunked-body", post(TE, body=SMUG_CHUNKED + NEXT_REQ, host=b"evil.com"), (BLOCKED, NEXT), "discarded, or closed", alt=[BLOCKED]),
    _case("malformed-cl-body", post(b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ, host=b"evil.com:"), (R400, NEXT), "malformed_host, body discarded", alt=[R400]),
    _case("mismatch-cl-body", req(b"POST http://evil.com/ HTTP/1.1", b"Host: www.acme.com", b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ), (R400, NEXT), "authority_mismatch, body discarded", alt=[R400]),
    _case("refused-over-discard-limit", post(b"Content-Length: 1000000", body=SMUG, host=b"evil.com"), BLOCKED, "more than the gateway drains: answer, close, never parse the body"),
    _case("refused-expect-100", post(b"Expect: 100-continue", b"Content-Length: %d" % len(SMUG), body=SMUG + NEXT_REQ, host=b"evil.com"), (BLOCKED, NEXT), "no 100 for a refusal; the body sent anyway is discarded", alt=[BLOCKED]),
    _case("connect-with-body", req(b"CONNECT www.acme.com:443 HTTP/1.1", b"Host: www.acme.com:443", body=SMUG), R405, "no tunnel: the bytes after a refused CONNECT never reach the upstream", alt=[(R405, R400)]),
    # WebSocket smuggling (0ang3el 2019): a proxy that believes an Upgrade succeeded opens a
    # raw tunnel; the next bytes reach the back-end undecided. Declined upgrades keep HTTP/1.1,
    # so the next request is decided on its own (RFC 9110 7.8), or the connection closes.
    _case("refused-upgrade", req(b"GET /c HTTP/1.1", b"Host: evil.com", b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", body=NEXT_REQ), (BLOCKED, NEXT), "no tunnel after a refusal", alt=[BLOCKED]),
    _case("upgrade-upstream-declines", req(b"GET /c HTTP/1.1", b"Host: www.acme.com", b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", body=req(b"GET /c HTTP/1.1", b"Host: evil.com", CLOSE)), (WS_REFUSED, BLOCKED), "no tunnel when the upstream answers 200: the next request is still decided", alt=[WS_REFUSED]),
    _case("h2c-upgrade", get(b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA", b"Connection: Upgrade, HTTP2-Settings"), A(path="/c"), "h2c smuggling (Bishop Fox 2020): Upgrade/HTTP2-Settings never reach the upstream"),
    # -- smuggling: chunk sizes (RFC 9112 7.1: chunk-size = 1*HEXDIG) --------------------------
    _case("chunk-ext", post(TE, body=b"5;ext=1\r\nhello\r\n0\r\n\r\n" + NEXT_REQ), (A(path="/c", body=5), NEXT), "extensions are ignored"),
    _case("chunk-upper-hex", post(TE, body=b"A\r\n0123456789\r\n0\r\n\r\n" + NEXT_REQ), (A(path="/c", body=10), NEXT), "HEXDIG is case-insensitive"),
    _case("chunk-zero-padded", post(TE, body=b"0005\r\nhello\r\n0\r\n\r\n" + NEXT_REQ), (A(path="/c", body=5), NEXT), "leading zeros"),
    _case("chunk-0x", post(TE, CLOSE, body=b"0x5\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "strtol reads 0x5 as 5"),
    _case("chunk-minus", post(TE, CLOSE, body=b"-5\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "sign"),
    _case("chunk-plus", post(TE, CLOSE, body=b"+5\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "int('+5', 16) == 5"),
    _case("chunk-underscore", post(TE, CLOSE, body=b"0_5\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "int('0_5', 16) == 5"),
    _case("chunk-leading-space", post(TE, CLOSE, body=b" 5\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "space before the size"),
    _case("chunk-bws-ext", post(TE, CLOSE, body=b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), A(path="/c", body=5), "BWS before ';' (RFC 9112 7.1.1)", alt=[R400]),
    _case("chunk-empty-size", post(TE, CLOSE, body=b"\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "no size"),
    # No implementation stores 2**64+5: some wrap it to 5 and run SMUG (RFC 9112 7.1: "MUST
    # anticipate potentially large hexadecimal numerals and prevent ... overflows").
    _case("chunk-overflow", post(TE, CLOSE, body=b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "2**64+5 wraps to 5", alt=[R413]),
    _case("chunk-huge", post(TE, CLOSE, body=b"f" * 40 + b"\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "160-bit size", alt=[R413]),
    _case("chunk-data-too-long", post(TE, CLOSE, body=b"3\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "data longer than its size"),
    _case("chunk-no-crlf-after-data", post(TE, CLOSE, body=b"5\r\nhelloXX0\r\n\r\n" + SMUG), R400, "missing CRLF after the data"),
    _case("chunk-bare-lf", post(TE, CLOSE, body=b"5\nhello\n0\n\n" + SMUG), R400, "lone LF in chunked framing (TE.TE via line ends)", alt=[A(path="/c", body=5)]),
    _case("chunk-bare-cr", post(TE, CLOSE, body=b"5\rhello\r0\r\r" + SMUG), R400, "lone CR in chunked framing"),
    _case("chunk-nul-ext", post(TE, CLOSE, body=b"5;a=\x00\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "NUL in an extension"),
    _case("chunk-lf-in-ext", post(TE, CLOSE, body=b"5;a\nb\r\nhello\r\n0\r\n\r\n" + SMUG), R400, "LF inside an extension (chunk-extension desync, 2024)"),
    _case("chunk-trailer-host", post(TE, body=b"5\r\nhello\r\n0\r\nHost: evil.com\r\nX-Forwarded-Host: evil.com\r\nContent-Length: 99\r\n\r\n" + NEXT_REQ), (A(path="/c", body=5), NEXT), "trailer fields never become header fields upstream", alt=[R400]),
    # -- pipelining (contract §2: every request decided on its own) ---------------------------
    _case(
        "pipeline-mixed",
        b"GET /p1 HTTP/1.1\r\nHost: www.acme.com\r\n\r\n"
        b"GET /p2 HTTP/1.1\r\nHost: evil.com\r\n\r\n"
        b"GET /p3 HTTP/1.1\r\nHost: a.shop.acme.com\r\n\r\n"
        b"GET /p4 HTTP/1.1\r\nHost: bad..host\r\n\r\n" + NEXT_REQ,
        (A(path="/p1"), BLOCKED, A("a.shop.acme.com", "/p3"), R400, NEXT),
        "one decision per request",
    ),
    # The parser refuses the second request: the first was complete and must still be
    # answered (else the client takes the 400 as the answer to /p1), then 400 and close.
    _case("pipeline-then-duplicate-host", b"GET /p1 HTTP/1.1\r\nHost: www.acme.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: www.acme.com\r\nHost: evil.com\r\n\r\n" + SMUG, (A(path="/p1"), R400), "duplicate Host in the second request"),
    _case("pipeline-then-bad-method", b"GET /p1 HTTP/1.1\r\nHost: www.acme.com\r\n\r\nG@T /p2 HTTP/1.1\r\nHost: www.acme.com\r\n\r\n" + SMUG, (A(path="/p1"), R400), "bad method token in the second request"),
]
# fmt: on


# -- the live gateways -----------------------------------------------------------------------

# Names the upstream must never receive from a client (contract §2), plus hop-by-hop ones
# (RFC 9110 7.6.1) and h2c's HTTP2-Settings.
NEVER_UPSTREAM = frozenset(
    {
        "x-forwarded-server", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-scheme",
        "x-forwarded-ssl", "x-original-host", "x-original-url", "x-rewrite-url", "x-host",
        "x-http-host-override", "x-real-ip", "forwarded",
        "upgrade", "http2-settings", "keep-alive", "proxy-connection", "te", "trailer",
    }
)  # fmt: skip
TOKEN = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")
PARSER_ENV: dict[str, dict[str, str]] = {"c": {}, "python": {"AIOHTTP_NO_EXTENSIONS": "1"}}
# Every case ends well within this: answered, or closed by the header deadline (2 s here)
# or aiohttp's lingering close (2 s). Waiting longer means the gateway hung.
CASE_TIMEOUT = 4.0


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
        # A header block the parser never sees end (a lone-LF request, say) is closed after
        # 2 s instead of 10: keeps the corpus fast.
        "timeouts": {"header_s": 2.0},
    }


def _env_without_override() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "AIOHTTP_NO_EXTENSIONS"}


@pytest.fixture(scope="module", params=sorted(PARSER_ENV))
def live(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    parser: str = request.param
    tmp = tmp_path_factory.mktemp(f"adversarial-{parser}")
    # The C run must not inherit an AIOHTTP_NO_EXTENSIONS=1 from the developer's shell.
    env = {"AIOHTTP_NO_EXTENSIONS": ""} | PARSER_ENV[parser]
    lv = Live(parser, start_gateway(_config(upstream.url), tmp, env=env))
    try:
        yield lv
    finally:
        lv.gw.stop()
        # What each case got, for comparing the two parsers by hand.
        (tmp / "observed.json").write_text(json.dumps(lv.observed, indent=1))


def test_parser_selection_is_real() -> None:
    """AIOHTTP_NO_EXTENSIONS=1 really swaps llhttp for the pure-Python parser, in a child
    started as start_gateway starts the gateway (same interpreter, env merged)."""
    code = "import aiohttp.http_parser as p; print(p.HttpRequestParser.__module__)"
    seen = {}
    for parser, extra in PARSER_ENV.items():
        env = _env_without_override() | {"AIOHTTP_NO_EXTENSIONS": ""} | extra
        out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, check=True)
        seen[parser] = out.stdout.strip()
    assert seen == {"c": "aiohttp._http_parser", "python": "aiohttp.http_parser"}, seen


@dataclass
class Exchange:
    responses: list[RawResponse]
    interim: list[RawResponse]
    timed_out: bool


def exchange(port: int, data: bytes, timeout: float = CASE_TIMEOUT) -> Exchange:
    """Send the bytes at once (pipelined), read responses until the gateway closes."""
    out: list[RawResponse] = []
    interim: list[RawResponse] = []
    timed_out = False
    closing = False
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # The gateway may close before reading everything; then read what it said.
        with contextlib.suppress(OSError):
            s.sendall(data)
        deadline = time.monotonic() + timeout
        while True:
            # After "Connection: close" nothing may follow; don't sit through the lingering
            # close, just look briefly for stray bytes.
            wait = 0.2 if closing else deadline - time.monotonic()
            s.settimeout(max(0.01, wait))
            try:
                r = read_response(s, buf)
            except TimeoutError:
                timed_out = not closing or bool(buf)
                break
            except (ConnectionError, OSError):
                break
            (interim if 100 <= r.status < 200 else out).append(r)
            closing = closing or (r.header("Connection") or "").lower() == "close"
    return Exchange(out, interim, timed_out)


def classify(r: RawResponse) -> Out | str:
    if r.header("X-Gateway-Config") is not None:  # the gateway's own refusal
        kind = GATEWAY_STATUS.get(r.status)
        return Out(kind) if kind else f"gateway status {r.status}: {r.body[:80]!r}"
    if r.status == 200:
        try:
            seen = r.json()
        except ValueError:
            return f"200 not from the echo upstream: {r.body[:80]!r}"
        hosts = [v for k, v in seen["headers"] if k.lower() == "host"]
        host = hosts[0] if len(hosts) == 1 else repr(hosts)
        return Out("allowed", host, seen["path"], seen["body_bytes"])
    if r.status == 502 and r.body.startswith(b"502 upstream refused the WebSocket"):
        return WS_REFUSED
    if r.status < 500:
        return Out(f"upstream-{r.status}")
    return f"status {r.status}: {r.body[:80]!r}"


def matches(got: list[Out | str], want: tuple[Out, ...]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if not isinstance(g, Out) or g.kind != w.kind:
            return False
        if w.kind == "allowed" and (
            g.host != w.host
            or (w.path is not None and g.path != w.path)
            or (w.body is not None and g.body != w.body)
        ):
            return False
    return True


def upstream_view_problems(r: RawResponse) -> list[str]:
    """What the echo upstream received for an allowed request (contract §2 rewriting)."""
    headers: list[list[str]] = r.json()["headers"]
    names = {k.lower() for k, _ in headers}
    hosts = [v for k, v in headers if k.lower() == "host"]
    xfh = [v for k, v in headers if k.lower() == "x-forwarded-host"]
    rid = [v for k, v in headers if k.lower() == "x-request-id"]
    problems = []
    if len(hosts) != 1 or xfh != hosts:
        problems.append(f"upstream saw Host {hosts} and X-Forwarded-Host {xfh}")
    if len(rid) != 1 or rid[0] == "client-chosen":
        problems.append(f"upstream saw X-Request-ID {rid}")
    if names & NEVER_UPSTREAM:
        problems.append(f"upstream saw {sorted(names & NEVER_UPSTREAM)}")
    for k, v in headers:
        if not TOKEN.fullmatch(k) or "_" in k:
            problems.append(f"upstream saw field name {k!r}")
        if set(v) & {"\r", "\n", "\x00"}:
            problems.append(f"upstream saw a control byte in {k}: {v!r}")
    return problems


def counted(gw: Gateway) -> float:
    m = gw.metrics()
    return metric_sum(m, "gateway_requests_allowed_total") + metric_sum(
        m, "gateway_requests_blocked_total"
    )


def run_case(live: Live, case: Case) -> None:
    before = counted(live.gw)
    ex = exchange(live.gw.port(), case.data)
    live.answered += len(ex.responses)
    got = [classify(r) for r in ex.responses]
    live.observed[case.name] = [str(g) for g in got] + (["<no close>"] if ex.timed_out else [])
    wants = [case.expect, *case.alt]
    problems = []
    if ex.timed_out:
        problems.append(f"neither answered nor closed within {CASE_TIMEOUT}s")
    if not any(matches(got, w) for w in wants):
        shown = " or ".join(str([str(o) for o in w]) for w in wants)
        problems.append(f"got {[str(g) for g in got]}, want {shown}")
    for i, (r, g) in enumerate(zip(ex.responses, got, strict=True)):
        if r.status == 500:
            problems.append(f"response {i} is a 500")
        if b"SMUGGLED" in r.body:
            problems.append(f"response {i} answers a smuggled request: {r.body[:200]!r}")
        if isinstance(g, Out) and g.kind == "allowed":
            problems += [f"response {i}: {p}" for p in upstream_view_problems(r)]
        elif r.header("X-Gateway-Config") and r.header("Cache-Control") != "no-store":
            problems.append(f"refusal {i} without Cache-Control: no-store")
    if ex.interim and not (got and isinstance(got[0], Out) and got[0].kind == "allowed"):
        problems.append("100 Continue sent for a request that was not forwarded")
    delta = counted(live.gw) - before
    if delta != len(ex.responses):
        problems.append(f"allowed+blocked grew by {delta:g} for {len(ex.responses)} response(s)")
    assert not problems, (
        f"{case.name} [{live.parser} parser]: {'; '.join(problems)}\n"
        f"  why: {case.why}\n  sent: {case.data[:400]!r}"
    )


def probe(live: Live) -> None:
    """A fresh request after each case, answered for its own path: nothing the case sent
    was left over on the gateway's pooled upstream connections."""
    live.seq += 1
    path = f"/probe-{live.seq}"
    ex = exchange(live.gw.port(), host_req(b"www.acme.com", path.encode()))
    live.answered += len(ex.responses)
    assert [(r.status, r.json()["path"]) for r in ex.responses] == [(200, path)], ex


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus(live: Live, case: Case) -> None:
    try:
        run_case(live, case)
    finally:
        probe(live)


@pytest.mark.parametrize(
    "bad_body",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"10000000000000005\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX"],
    ids=["bad-size", "overflow", "no-crlf"],
)
def test_bad_chunk_after_dispatch(live: Live, bad_body: bytes) -> None:
    """The body arrives in a later read than the headers, so the request has already been
    decided and forwarded when the chunk framing breaks: still a 400 and a closed
    connection (never a hang, never a 502 blamed on the upstream), counted once."""
    before = counted(live.gw)
    with socket.create_connection(("127.0.0.1", live.gw.port()), timeout=CASE_TIMEOUT) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: www.acme.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.2)
        s.sendall(bad_body + b"GET /SMUGGLED HTTP/1.1\r\nHost: www.acme.com\r\n\r\n")
        buf = bytearray()
        resp = read_response(s, buf)
        assert resp.status == 400, resp.body
        assert s.recv(65536) == b"", "the connection is closed after a broken body"
    live.answered += 1
    assert counted(live.gw) - before == 1


def test_gateway_survived_the_corpus(live: Live) -> None:
    """Runs after the corpus for the same parser (pytest groups tests by the module-scoped
    param): the process is alive, logged no error, and allowed + blocked equals every
    response it gave. Exact, because no case here makes the gateway count a request it
    does not answer (no ``blocked_response: close`` in this config)."""
    assert live.gw.proc.popen.poll() is None, live.gw.proc.output()
    total = counted(live.gw)
    assert total == live.answered, f"allowed+blocked {total:g}, responses {live.answered}"
    errors = [
        ln for ln in live.gw.proc.output().splitlines()
        if '"level":"error"' in ln or "Traceback" in ln or "exception was never retrieved" in ln
    ]  # fmt: skip
    assert not errors, "\n".join(e[:400] for e in errors)
