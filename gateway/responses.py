"""Texts of the gateway's own answers, shared by every engine.

A refusal never echoes the raw Host value (it may carry script or CRLF aimed at a log
viewer or a cache); it carries a request id the operator can find in the logs instead.
"""

from __future__ import annotations

import os

REASON_TEXT = {
    "unknown_host": "Host header does not match",
    "no_route": "Host header does not match",
    "missing_host": "Bad Request: the Host header is missing",
    "duplicate_host": "Bad Request: more than one Host header",
    "malformed_host": "Bad Request: the Host header is not a valid host[:port]",
    "authority_mismatch": "Bad Request: the request target names another host than Host",
    "method_not_allowed": "Method Not Allowed: CONNECT is not supported",
    "body_too_large": "Payload Too Large",
    "sni_mismatch": "Misdirected Request: the TLS server name does not match Host",
    "bad_request": "Bad Request",
}


def refusal_text(reason: str, request_id: str, custom: str | None = None) -> str:
    if custom is not None:
        return custom
    return f"{REASON_TEXT.get(reason, 'Bad Request')}\nRequest ID: {request_id}\n"


def new_request_id() -> str:
    # 16 hex characters: unique enough to find one line in a day of logs, cheap (one
    # syscall-free urandom read in CPython's buffered path is ~0.3 µs).
    return os.urandom(8).hex()
