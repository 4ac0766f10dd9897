"""The PROXY protocol parser (gateway/proxy_protocol.py), sans-IO: headers, and reading one
without reading past it (what a TLS listener needs: the bytes after the header belong to
the TLS layer)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import proxy_protocol as pp


def v2(client: str | None, tlvs: bytes = b"", local: bool = False) -> bytes:
    if client is None:
        body, fam = tlvs, 0x00
    elif ":" in client:
        body = socket.inet_pton(socket.AF_INET6, client) * 2 + struct.pack("!HH", 1, 2) + tlvs
        fam = 0x21
    else:
        body = socket.inet_aton(client) + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 1, 2)
        body += tlvs
        fam = 0x11
    cmd = 0x20 if local else 0x21
    return pp.V2_SIGNATURE + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


def v1(client: str | None) -> bytes:
    if client is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if ":" in client else "TCP4"
    dst = "::1" if proto == "TCP6" else "10.0.0.1"
    return f"PROXY {proto} {client} {dst} 56324 443\r\n".encode()


addresses = st.one_of(
    st.none(),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a))),
)
headers = st.one_of(
    addresses.map(v1),
    st.tuples(addresses, st.binary(max_size=40)).map(lambda a: v2(a[0], a[1])),
)


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (v1("203.0.113.7"), "203.0.113.7"),
        (v1("2001:db8::1"), "2001:db8::1"),
        (v1(None), None),
        (v2("203.0.113.7"), "203.0.113.7"),
        (v2("2001:db8::1"), "2001:db8::1"),
        (v2(None, local=True), None),
    ],
)
def test_parse(header: bytes, client: str | None) -> None:
    parsed = pp.parse(header + b"\x16\x03\x01rest")
    assert parsed == pp.ProxyHeader(client, len(header))
    for cut in range(1, len(header)):
        assert pp.parse(header[:cut]) is None, cut


@pytest.mark.parametrize(
    "bad",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello where the header should be
        b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY " + b"x" * 200,
        pp.V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
        pp.V2_SIGNATURE + b"\x21\x11\x10\x00",  # longer than V2_MAX_BODY
    ],
)
def test_malformed_headers_raise(bad: bytes) -> None:
    with pytest.raises(pp.ProxyProtocolError):
        pp.parse(bad)


@given(headers, st.binary(max_size=64))
def test_safe_read_never_reads_past_the_header(header: bytes, after: bytes) -> None:
    """Read as a TLS listener reads (at most safe_read bytes at a time) from a stream of
    the header and what follows it: the header is found, and nothing after it was read."""
    stream = header + after
    buf = b""
    while True:
        want = pp.safe_read(buf)
        assert want > 0
        buf += stream[len(buf) : len(buf) + want]
        assert len(buf) <= len(header), (buf, header)
        parsed = pp.parse(buf)
        if parsed is not None:
            break
    assert parsed.consumed == len(buf) == len(header)


def test_safe_read_on_the_longest_v1_line_stops_at_its_end() -> None:
    line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    line += b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert len(line) <= pp.V1_MAX
    buf = b""
    reads = 0
    while True:
        buf += line[len(buf) : len(buf) + pp.safe_read(buf)]
        reads += 1
        if pp.parse(buf) is not None:
            break
    assert buf == line and reads < 60
