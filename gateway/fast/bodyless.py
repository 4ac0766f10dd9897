"""The common request, parsed without aiohttp's message machinery; every other request is
left to aiohttp's parser.

Most requests a gateway sees are a whole head with no body, on a keep-alive connection:
``GET /path HTTP/1.1``, a Host and a few fields, CRLF CRLF, in one read. For those,
aiohttp's ``HttpRequestParser`` builds a ``CIMultiDict``, its proxy, a yarl ``URL`` and a
``RawRequestMessage``: about half of a refusal's instructions (bench/RESULTS.md, "What the
request parser costs"). ``BodylessParser`` parses such a head with the same llhttp, through
httptools' callbacks, makes the checks aiohttp's parser makes on top of llhttp, and builds
only what the engine reads (``BodylessHead``).

It declines, and the engine feeds the same bytes to aiohttp's parser as before, whenever
the request is anything but that common case: a body or any framing field
(``Content-Length``, ``Transfer-Encoding``), an upgrade or CONNECT, a request-target that is
not origin-form, HTTP other than 1.0 and 1.1, a connection that is not kept alive (or a
``Connection`` field other than ``keep-alive``, or ``Proxy-Connection``), a field or line
over the limits, a NUL, a duplicated singleton field, a missing Host in HTTP/1.1, aiohttp's
refused ``Sec-WebSocket-Key1``, anything llhttp refuses, or a head that does not end the
read (a second request after it, pipelined; blank lines after it are skipped, as both
parsers skip them). So every request that carries a body, where request
smuggling is decided, and every error and its 400 remain aiohttp's parser's; what this
module answers is a request both parsers accept, with the same fields (``tests/
test_bodyless.py`` holds the two to the same messages with Hypothesis).

The engine only offers a read here when its aiohttp parser stands between two messages
(``ClientConnection.boundary``), so declining loses nothing: aiohttp's parser gets the
read exactly as it would have. One ``BodylessParser`` serves every connection of a
listener: a read is parsed whole within one call, and after an accepted head llhttp is
back between messages; after a declined one it is replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import httptools
from aiohttp import hdrs
from aiohttp.http_writer import HttpVersion10, HttpVersion11

from .headers import METHOD_SP, NUL

HOST: Final = hdrs.HOST
METHODS: Final = {m.encode("ascii"): m for m in METHOD_SP}  # the usual methods, made once
EMPTY: Final[tuple[str, ...]] = ()

# What a field's name means here, by lowercased name: 0 an ordinary field; a power of two,
# a singleton field, refused twice by aiohttp's parser (``SINGLETON_HEADERS``), with Host's
# value also kept; -1 a field after which aiohttp's parser must decide (framing, aiohttp's
# refused field, Proxy-Connection, which llhttp reads as Connection); -2 Connection, taken
# only as ``keep-alive`` (any other value may close or upgrade: aiohttp's parser decides).
_DECLINE: Final = -1
_CONNECTION: Final = -2
_HOST_BIT: Final = 1
KINDS: Final[dict[bytes, int]] = {
    b"host": _HOST_BIT,
    b"content-location": 2,
    b"content-range": 4,
    b"content-type": 8,
    b"etag": 16,
    b"max-forwards": 32,
    b"server": 64,
    b"user-agent": 128,
    b"content-length": _DECLINE,
    b"transfer-encoding": _DECLINE,
    b"sec-websocket-key1": _DECLINE,
    b"connection": _CONNECTION,
    b"proxy-connection": _DECLINE,
}
# Connection values that keep the connection open, as clients send them (else lowercased).
KEEP_ALIVE: Final = frozenset({b"keep-alive", b"Keep-Alive"})


def _title(name: bytes) -> bytes:
    return b"-".join(part.capitalize() for part in name.split(b"-"))


# The same, under the spellings clients send, so the usual field costs one dict lookup
# and no lowercased copy; and ordinary names as sent, which need no lookup at all.
KINDS_SENT: Final[dict[bytes, int]] = (
    KINDS
    | {_title(n): k for n, k in KINDS.items()}
    | {b"ETag": 16, b"Sec-WebSocket-Key1": _DECLINE, b"Proxy-Connection": _DECLINE}
)
PLAIN_SENT: Final = frozenset(
    {
        b"Accept", b"Accept-Encoding", b"Accept-Language", b"Cache-Control",
        b"Cookie", b"Referer", b"Origin", b"Pragma", b"If-None-Match", b"If-Modified-Since",
        b"Authorization", b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Request-ID",
        b"Sec-Fetch-Dest", b"Sec-Fetch-Mode", b"Sec-Fetch-Site", b"Sec-Fetch-User",
        b"Upgrade-Insecure-Requests", b"DNT", b"Priority", b"Sec-CH-UA",
        b"Sec-CH-UA-Mobile", b"Sec-CH-UA-Platform",
        b"accept", b"accept-encoding", b"accept-language", b"cache-control",
        b"cookie", b"referer", b"origin", b"authorization", b"x-forwarded-for",
    }
)  # fmt: skip
assert not {n.lower() for n in PLAIN_SENT} & KINDS.keys()
assert all(KINDS[n.lower()] == k for n, k in KINDS_SENT.items())


class BodylessFields:
    """The part of ``CIMultiDictProxy`` the engine reads: ``getall`` and ``get`` by a
    case-insensitive name, values decoded as aiohttp's parser decodes them (UTF-8 with
    surrogate escapes, trailing whitespace gone). Host is kept decoded; any other field is
    looked up in the raw fields when asked for (X-Forwarded-For behind a trusted proxy)."""

    __slots__ = ("hosts", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]], hosts: Sequence[str]) -> None:
        self.raw = raw
        self.hosts = hosts

    def getall(self, name: str, default: Sequence[str] = EMPTY) -> Sequence[str]:
        if name is HOST:
            return self.hosts if self.hosts else default
        key = name.lower().encode("utf-8", "surrogateescape")
        found = [v.decode("utf-8", "surrogateescape") for n, v in self.raw if n.lower() == key]
        return found if found else default

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("utf-8", "surrogateescape")
        for n, v in self.raw:
            if n.lower() == key:
                return v.decode("utf-8", "surrogateescape")
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class BodylessHead:
    """The attributes of aiohttp's ``RawRequestMessage`` the engine reads, for a request
    with no body that keeps its connection open (so ``should_close``, ``chunked`` and
    ``upgrade`` are always false)."""

    __slots__ = ("headers", "method", "minor", "path", "raw_headers", "version")

    should_close: Final = False
    chunked: Final = False
    upgrade: Final = False

    def __init__(
        self,
        method: str,
        path: str,
        version: Any,
        headers: BodylessFields,
        raw_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers
        self.raw_headers = raw_headers
        self.minor = 1 if version is HttpVersion11 else 0  # (read without the namedtuple)


class BodylessParser:
    """``parse(data)``: a ``BodylessHead`` when ``data`` is exactly one whole head of the
    common case (the module's docstring), else None, and the read is aiohttp's parser's.
    Also the httptools callbacks; none raises: a reason to decline is a flag, read at the
    end (an exception in a callback is an object and a traceback per declined read). No
    ``on_headers_complete``: httptools calls only the callbacks its protocol has, and the
    keep-alive decision is taken from the fields (``on_header``), a Python call less."""

    # The state of the read being parsed, set by _begin and the callbacks.
    url: bytes
    raw: list[tuple[bytes, bytes]]
    host: str | None
    seen: int  # the singleton fields met, as bits
    keep: bool  # a Connection: keep-alive field
    ok: bool
    done: bool

    def __init__(self, max_line: int, max_field: int, max_headers: int) -> None:
        self.max_line = max_line
        self.max_field = max_field
        self.max_headers = max_headers
        self._begin()
        self.parser = httptools.HttpRequestParser(self)

    def _begin(self) -> None:
        # (a method of its own: assigned in parse(), these would be narrowed there to the
        # constants assigned, which the callbacks change behind the type checker's back)
        self.url = b""
        self.raw = []
        self.host = None
        self.seen = 0
        self.keep = False
        self.ok = True
        self.done = False

    def parse(self, data: bytes) -> BodylessHead | None:
        if not 0x41 <= data[0] <= 0x5A:
            # Not a method's first letter: llhttp skips a CR or LF before the request line,
            # and the method and version below are read from the line's bytes.
            return None
        self._begin()
        try:
            self.parser.feed_data(data)
        except Exception:  # llhttp refused it, or an upgrade: aiohttp's parser's to say
            self.ok = False
        if not (self.ok and self.done):
            # llhttp is mid-message or failed: a fresh one for the next read.
            self.parser = httptools.HttpRequestParser(self)
            return None
        # The request line, which llhttp accepted and which starts the read: METHOD SP target
        # SP HTTP/x.y CRLF, the target (as llhttp reported it) without a space (strict
        # llhttp). The space before the version is required: "GET /xHTTP/1.0" is an
        # HTTP/0.9 line whose target ends in what looks like a version. (No bytes.find for
        # the usual method: it costs an argument tuple and its parsing.)
        url = self.url
        if data.startswith(b"GET "):
            method = "GET"
            start = 5 + len(url)
        else:
            method_b = data[: data.find(b" ")]
            found = METHODS.get(method_b)
            method = method_b.decode("ascii") if found is None else found
            start = len(method_b) + 2 + len(url)
        version: Any = None
        if data[start - 1 : start] == b" " and data[start + 8 : start + 10] == b"\r\n":
            sent = data[start : start + 8]  # (compared: a dict lookup would hash it)
            version = (
                HttpVersion11
                if sent == b"HTTP/1.1"
                else HttpVersion10
                if sent == b"HTTP/1.0"
                else None
            )
        path = url.decode("utf-8", "surrogateescape")
        host = self.host
        if (
            version is None
            or path[:1] != "/"
            # aiohttp's "Missing 'Host' header in request."
            or (host is None and version is HttpVersion11)
            # HTTP/1.0 closes without Connection: keep-alive
            or (version is not HttpVersion11 and not self.keep)
        ):
            # llhttp may now refuse what follows (after a message that closes, which
            # HTTP/2.0 or 1.0 without keep-alive is to it): a fresh one for the next read.
            self.parser = httptools.HttpRequestParser(self)
            return None
        raw = self.raw
        hosts: Sequence[str] = EMPTY if host is None else (host,)
        return BodylessHead(method, path, version, BodylessFields(raw, hosts), raw)

    # -- httptools' callbacks -------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self.done:
            self.ok = False  # a second request in the read (pipelined): aiohttp's parser's
            return
        # (no bytes + bytes in these modules: gateway/fast/__init__.py)
        url = b"".join((self.url, url)) if self.url else url
        self.url = url
        if len(url) > self.max_line:
            self.ok = False  # aiohttp's LineTooLong

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.ok or self.done:
            self.ok = False
            return
        raw = self.raw
        # aiohttp's limits: the name and the value as sent (its trailing whitespace too).
        if len(name) + len(value) > self.max_field or len(raw) >= self.max_headers:
            self.ok = False
            return
        if NUL in value:
            self.ok = False
            return
        if value and (value[-1] == 0x20 or value[-1] == 0x09):
            value = value.rstrip(b" \t")  # llhttp strips only the leading whitespace
        raw.append((name, value))
        if name in PLAIN_SENT:
            return
        kind = KINDS_SENT.get(name)
        if kind is None:
            kind = KINDS.get(name.lower(), 0)
        if kind:
            if kind == _CONNECTION:
                # Kept alive by llhttp's rules (what aiohttp's should_close comes from): an
                # HTTP/1.1 request unless a Connection field says otherwise, an HTTP/1.0
                # one when it says keep-alive.
                if value not in KEEP_ALIVE and value.lower() != b"keep-alive":
                    self.ok = False
                self.keep = True
                return
            if kind < 0 or self.seen & kind:
                self.ok = False  # a framing field, or a singleton twice
                return
            self.seen |= kind
            if kind == _HOST_BIT:
                self.host = value.decode("utf-8", "surrogateescape")

    def on_message_complete(self) -> None:
        self.done = True
