"""The request head sent upstream, built from the raw header bytes.

The rules are ``proxy.upstream_headers``'s, the aiohttp engine's, applied to bytes instead
of a ``CIMultiDict`` of ``str``: the same names dropped (``DROP_REQUEST``, any name with
``_``, the names listed in ``Connection``), the same four set by the gateway, in the same
order. Building a multidict and encoding every name and value back to bytes was the
largest single cost of a forwarded request in the profile (bench/RESULTS.md);
``tests/test_fast_engine.py`` checks with Hypothesis that both produce the same fields.

Header names reaching here are tokens (both of aiohttp's parsers refuse anything else),
so ``bytes.lower()`` is ``str.lower()`` on them; the values of ``Connection`` are decoded
as latin-1 exactly as ``upstream_headers`` does, because ``str.strip()`` strips more than
``bytes.strip()`` (NBSP, NEL, \\x1c-\\x1f).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gateway.proxy import DROP_REQUEST, connection_tokens

DROP_REQUEST_B: Final = frozenset(name.encode("ascii") for name in DROP_REQUEST)
# Single bytes are looked for as ints: ``b"_" in data`` first tries to read ``b"_"`` as an
# int, and raises and clears a TypeError before it searches (bytes.__contains__), about
# ten times the cost of ``0x5F in data``.
UNDERSCORE: Final = 0x5F
NUL: Final = 0


def drop_listed(parts: list[bytes], start: int, listed: set[str]) -> None:
    """Remove from ``parts`` (name, ": ", value, CRLF groups from ``start`` on) the fields
    a Connection header ``listed``; in place (requests and relayed responses)."""
    kept = parts[start:]
    del parts[start:]
    for i in range(0, len(kept), 4):
        if kept[i].lower().decode("latin-1") not in listed:
            parts += kept[i : i + 4]


# The request line's start for the usual methods, made once; any other method llhttp
# accepts is encoded per request.
METHOD_SP: Final = {
    m: f"{m} ".encode("ascii")
    for m in (
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    )
}  # fmt: skip
# The blank line ending a head with no framing fields (most requests).
END: Final = b"\r\n\r\n"


def host_lines(forward_host: bytes, proto: bytes) -> tuple[bytes, bytes]:
    """The fixed parts of the head for one forwarded Host: the request line's end and the
    Host field, and X-Forwarded-Proto/-Host up to the value of X-Request-ID. Made once per
    Host (the listener's view keeps them, bounded): a head is then a few parts to join."""
    return (
        b"".join((b" HTTP/1.1\r\nHost: ", forward_host, b"\r\n")),
        b"".join(
            (b"\r\nX-Forwarded-Proto: ", proto, b"\r\nX-Forwarded-Host: ", forward_host,
             b"\r\nX-Request-ID: ")
        ),
    )  # fmt: skip


def request_head(
    method_sp: bytes,
    target: bytes,
    raw_headers: Sequence[tuple[bytes, bytes]],
    lines: tuple[bytes, bytes],
    xff: bytes,
    request_id: bytes,
    framing: bytes,
) -> bytes:
    """``METHOD target HTTP/1.1``, ``Host`` first (where aiohttp's client writes it), the
    client's remaining fields in order, X-Forwarded-For/-Proto/-Host and X-Request-ID,
    then ``framing`` (Content-Length, Transfer-Encoding, Upgrade lines) and the blank
    line. ``method_sp``: the method and a space; ``lines``: ``host_lines()``'s."""
    parts = [method_sp, target, lines[0]]
    listed: set[str] | None = None
    for name, value in raw_headers:
        lname = name.lower()
        if lname == b"connection":
            tokens = connection_tokens(value)
            listed = tokens if listed is None else listed | tokens
            continue
        if lname in DROP_REQUEST_B or UNDERSCORE in lname:
            continue
        # (appends: ``parts += (...)`` builds a tuple per field)
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    if listed:
        drop_listed(parts, 3, listed)  # rare: a Connection header naming fields
    parts.append(b"X-Forwarded-For: ")
    parts.append(xff)
    parts.append(lines[1])
    parts.append(request_id)
    parts.append(b"".join((b"\r\n", framing, b"\r\n")) if framing else END)
    return b"".join(parts)
