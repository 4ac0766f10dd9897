"""PROXY protocol v1 and v2 (HAProxy's spec), sans-IO.

A load balancer in front of the gateway prepends one header to the connection naming the
real client. It is parsed before any HTTP byte; a malformed one closes the connection
(the spec says a receiver must not guess). Whether the address is believed is decided by
the caller against ``trusted_proxies``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_MAX_BODY = 2048  # addresses plus TLVs; anything longer is not a header we accept


class ProxyProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    client: str | None  # None for LOCAL / UNKNOWN: use the peer address
    consumed: int


def parse(buf: bytes) -> ProxyHeader | None:
    """The header at the start of ``buf``; None when more bytes are needed."""
    if buf[:1] == b"P":
        return _v1(buf)
    if buf[:1] == b"\r":
        return _v2(buf)
    raise ProxyProtocolError("connection does not start with a PROXY protocol header")


def safe_read(buf: bytes) -> int:
    """How many more bytes can be read after ``buf`` (the start of a header, not yet
    complete) without reading past the header's end. On a TLS listener the header comes in
    the clear before the handshake, so the bytes after it must stay unread for the TLS
    layer: the header is read in pieces of at most this size. Never 0."""
    size = len(buf)
    if size < 12:
        return 12 - size  # the v2 signature; shorter than any v1 line (15 bytes at least)
    if buf[:1] == b"\r":
        if size < 16:
            return 16 - size
        return max(1, 16 + int.from_bytes(buf[14:16], "big") - size)
    if size < 15:
        return 15 - size
    # A v1 line ends in CRLF: two more bytes are within it unless the last one is CR.
    return 1 if buf[-1:] == b"\r" else 2


def _v1(buf: bytes) -> ProxyHeader | None:
    if not b"PROXY "[: len(buf)] == buf[:6]:
        raise ProxyProtocolError("bad v1 signature")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError("v1 header longer than 107 bytes")
        return None
    parts = buf[:end].decode("ascii", "replace").split(" ")
    if parts[:2] == ["PROXY", "UNKNOWN"]:
        return ProxyHeader(None, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed v1 header")
    _, proto, src, dst, sport, dport = parts
    try:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    except ValueError:
        raise ProxyProtocolError("bad address in v1 header") from None
    if (proto == "TCP4") != (s.version == 4) or s.version != d.version:
        raise ProxyProtocolError("address family does not match v1 protocol")
    for port in (sport, dport):
        if not port.isdigit() or not 0 <= int(port) <= 65535 or (len(port) > 1 and port[0] == "0"):
            raise ProxyProtocolError("bad port in v1 header")
    return ProxyHeader(str(s), end + 2)


def _v2(buf: bytes) -> ProxyHeader | None:
    if len(buf) < 16:
        if V2_SIGNATURE[: len(buf)] != buf[:12]:
            raise ProxyProtocolError("bad v2 signature")
        return None
    if buf[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("bad v2 signature")
    ver_cmd, fam = buf[12], buf[13]
    length = int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2 or (ver_cmd & 0xF) not in (0, 1):
        raise ProxyProtocolError("unsupported v2 version or command")
    if length > V2_MAX_BODY:
        raise ProxyProtocolError("v2 header too long")
    if len(buf) < 16 + length:
        return None
    body = buf[16 : 16 + length]
    consumed = 16 + length
    if ver_cmd & 0xF == 0:  # LOCAL: health checks from the balancer itself
        return ProxyHeader(None, consumed)
    family = fam >> 4
    if family == 1:  # AF_INET
        if length < 12:
            raise ProxyProtocolError("short v2 IPv4 address block")
        return ProxyHeader(str(ipaddress.IPv4Address(body[:4])), consumed)
    if family == 2:  # AF_INET6
        if length < 36:
            raise ProxyProtocolError("short v2 IPv6 address block")
        return ProxyHeader(str(ipaddress.IPv6Address(body[:16])), consumed)
    return ProxyHeader(None, consumed)  # AF_UNSPEC / AF_UNIX: keep the peer
