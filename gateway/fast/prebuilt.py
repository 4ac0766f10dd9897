"""The bytes of the gateway's own answers, built once and reused.

uvicorn's ``httptools_impl`` builds its status lines and default headers at start-up and
nginx keeps its error pages as static buffers: the same here. A refusal is one
``bytes.join`` of constant parts around the two things that vary, the request id and the
``Date`` line (rebuilt once a second by a timer, as uvicorn's ``ServerState`` does).
The texts are ``gateway.responses``'s, shared with the aiohttp engine.
"""

from __future__ import annotations

import asyncio
import binascii
import email.utils
import os
import time
from http import HTTPStatus
from typing import Final

from gateway.policy import Decision
from gateway.responses import refusal_text

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_RID_LEN: Final = 16  # hex characters, the format of responses.new_request_id()
_PLACEHOLDER = "\x00" * _RID_LEN

# Connection handling of a response, chosen per request (RFC 9112 §9.3): HTTP/1.1 is
# persistent unless told otherwise, HTTP/1.0 only when told so.
KEEP_11: Final = 0
KEEP_10: Final = 1
CLOSE: Final = 2
CONNECTION_LINE: Final = (b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n")
# The same, with the blank line that ends a head.
CONNECTION_END: Final = tuple(b"".join((line, b"\r\n")) for line in CONNECTION_LINE)


_STATUS_LINES: dict[tuple[int, str | None], bytes] = {}


def status_line(status: int, reason: str | None = None) -> bytes:
    # Always HTTP/1.1, whatever the request's minor version: RFC 9112 §2.3 asks a server
    # for the highest version it conforms to, and nginx does the same.
    line = _STATUS_LINES.get((status, reason))
    if line is not None:
        return line
    line = _status_line(status, reason)
    if len(_STATUS_LINES) < 512:  # reasons come from upstreams: bounded
        _STATUS_LINES[(status, reason)] = line
    return line


_RELAYED_LINES: dict[tuple[int, bytes], bytes] = {}


def relayed_status_line(status: int, reason: bytes) -> bytes:
    """The status line of an upstream's response: its code and its reason phrase's bytes
    as they came (aiohttp decodes them with surrogateescape and its writer encodes them
    back, the same bytes)."""
    line = _RELAYED_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_RELAYED_LINES) < 512:  # reasons come from upstreams: bounded
            _RELAYED_LINES[(status, reason)] = line
    return line


def _status_line(status: int, reason: str | None) -> bytes:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("utf-8", "surrogateescape"))


class DateLine:
    """``Date: <IMF-fixdate>\\r\\n`` (RFC 9110 §6.6.1), refreshed every second."""

    __slots__ = ("_handle", "line")

    def __init__(self) -> None:
        self.line = b""
        self._handle: asyncio.TimerHandle | None = None
        self._update()

    def _update(self) -> None:
        now = time.time()
        self.line = b"Date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode("ascii")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            self._update()
            # Aligned to the next whole second so the header changes when the clock does.
            self._handle = loop.call_later(1.0 - time.time() % 1.0 + 0.001, tick)

        self._update()
        self._handle = loop.call_later(1.0 - time.time() % 1.0 + 0.001, tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class RequestIds:
    """16 hex characters of ``os.urandom``, like ``responses.new_request_id()``, read 256
    at a time: one ``getrandom`` call per 256 requests instead of one per request.

    The hot path pops from ``ready`` itself and calls ``next()`` only when it is empty
    (a Python call costs about as much as the pop it wraps)."""

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready: list[bytes] = []

    def next(self) -> bytes:
        ids = self.ready
        if not ids:
            # Cut up front, so that a request pays a list pop, not a slice and a counter.
            buf = binascii.hexlify(os.urandom(_RID_LEN * 128))
            ids += [buf[i : i + _RID_LEN] for i in range(0, len(buf), _RID_LEN)]
        return ids.pop()


class Refusal:
    """One refusal's bytes around the request id: ``render(rid, date, mode)``."""

    __slots__ = ("_body_a", "_body_b", "_head", "_tails", "status")

    def __init__(self, decision: Decision, short_sha: str) -> None:
        self.status = decision.status
        text = refusal_text(decision.label, _PLACEHOLDER, decision.body).encode("utf-8")
        body_a, sep, body_b = text.partition(_PLACEHOLDER.encode())
        self._body_a = b"".join((b"\r\n", body_a))
        self._body_b = body_b if sep else None  # None: a custom body without the id
        self._head = b"".join(
            (status_line(decision.status), b"Cache-Control: no-store\r\nX-Request-ID: ")
        )
        common = (
            b"\r\nX-Gateway-Config: %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n" % (short_sha.encode("ascii"), len(text))
        )
        self._tails = tuple(b"".join((common, line)) for line in CONNECTION_LINE)

    def render(self, rid: bytes, date: bytes, mode: int, head_only: bool) -> bytes:
        if head_only:
            # A HEAD response: the same head, Content-Length included, no body
            # (RFC 9110 §9.3.2), as aiohttp's writer does.
            return b"".join((self._head, rid, self._tails[mode], date, b"\r\n"))
        if self._body_b is None:
            return b"".join((self._head, rid, self._tails[mode], date, self._body_a))
        return b"".join((self._head, rid, self._tails[mode], date, self._body_a, rid, self._body_b))


def plain(status: int, text: str, date: bytes, mode: int, head_only: bool = False) -> bytes:
    """The gateway's other answers (health, 502/504): the aiohttp engine's ``web.Response``
    with ``Cache-Control: no-store``, minus its ``Server`` header."""
    body = text.encode("utf-8")
    return b"".join(
        (
            status_line(status),
            b"Cache-Control: no-store\r\nContent-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            CONNECTION_LINE[mode],
            date,
            b"\r\n",
            b"" if head_only else body,
        )
    )
