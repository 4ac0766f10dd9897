"""Logging: JSON lines for machines, text for terminals, and a rate-limited refusal log.

Refusals are logged with what an operator needs to find and allow a host (request id,
listener, environment, reason, the Host value cut to a bound, client, config version),
but a flood of bad requests must not fill a disk: a token bucket lets a steady rate
through with a burst, and a periodic line says how many were suppressed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
import time
from typing import Any

import orjson

HOST_LOG_CHARS = 128


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(data, default=str).decode()
        except TypeError:  # a lone surrogate from a non-UTF-8 byte somewhere: escape it
            return orjson.dumps(
                {k: _escaped(v) if isinstance(v, str) else v for k, v in data.items()},
                default=str,
            ).decode()


def _escaped(value: str) -> str:
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # ascii() escapes control characters: a Host value cannot forge log lines.
            line += " " + " ".join(
                f"{k}={ascii(v) if isinstance(v, str) else v}" for k, v in fields.items()
            )
        return line


def setup_logging(fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class RefusalLog:
    """Token bucket: ``rate`` lines a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float = 20.0, burst: int = 100, interval_s: float = 10.0) -> None:
        self.rate, self.burst, self.interval_s = rate, float(burst), interval_s
        self.tokens = float(burst)
        self.last = time.monotonic()
        # While the bucket is empty: when its next token is due. Until then a line costs a
        # clock read and a comparison (a flood of refusals is what the limit is for).
        self.empty_until = 0.0
        self.suppressed = 0
        self.logger = logging.getLogger("gateway.refusals")

    def take(self) -> bool:
        """Take one line's token; False, and the line counted as suppressed, when the
        bucket is empty. For callers that build a line's fields only when it will be
        written: ``if log.take(): log.write(message, fields)``."""
        now = time.monotonic()
        if now < self.empty_until:
            self.suppressed += 1
            return False
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            # The refill is linear, so it can be skipped until the token it waits for.
            self.empty_until = now + (1.0 - self.tokens) / self.rate
            self.suppressed += 1
            return False
        self.tokens -= 1.0
        return True

    def record(self, message: str, fields: dict[str, Any]) -> None:
        if self.take():
            self.write(message, fields)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        """Write one line whose token was taken (``take``)."""
        host = fields.get("host")
        if isinstance(host, str) and len(host) > HOST_LOG_CHARS:
            fields["host"] = host[:HOST_LOG_CHARS]
            fields["host_truncated"] = True
        self.logger.warning(message, extra={"fields": fields})

    def flush_suppressed(self) -> None:
        if self.suppressed:
            self.logger.warning(
                "suppressed %d refusal log lines in the last %.0fs (rate limit %.0f/s)",
                self.suppressed,
                self.interval_s,
                self.rate,
                extra={"fields": {"suppressed": self.suppressed}},
            )
            self.suppressed = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush_suppressed()
