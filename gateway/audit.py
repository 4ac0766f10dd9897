"""The change log: one JSON line per change to the config, appended, never rewritten.

Writers (the admin API and the CLI, possibly in different processes) append while they
hold the config's write lock (``store.py``), so the lines are in the order the changes
were made. ``O_APPEND`` makes each ``write`` land whole at the end even without the lock;
``fsync`` makes a line survive a crash as surely as the config change it records.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import orjson

# GET /api/v1/audit returns at most this many lines; the file itself is never truncated
# here (rotate it with logrotate's copytruncate, as any append-only log).
MAX_TAIL = 10_000
_BLOCK = 64 * 1024


def default_path(config_path: str) -> str:
    """``/etc/gw/config.json`` -> ``/etc/gw/config.json.audit.jsonl``."""
    return os.path.abspath(config_path) + ".audit.jsonl"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditError(Exception):
    """The audit log cannot be opened: the change is refused (nothing goes unaudited)."""


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def open(self) -> int:
        """Open for appending before a change is made, so an unwritable log refuses it."""
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc.strerror or exc}") from None

    @staticmethod
    def write(fd: int, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)

    def append(self, record: dict[str, Any]) -> None:
        fd = self.open()
        try:
            self.write(fd, record)
        finally:
            os.close(fd)

    def tail(self, limit: int = 100) -> list[dict[str, Any]]:
        """The last ``limit`` records, oldest first. Reads backwards: the log may be large."""
        limit = max(0, min(limit, MAX_TAIL))
        if limit == 0:
            return []
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, read in blocks
        except FileNotFoundError:
            return []
        with f:
            end = f.seek(0, os.SEEK_END)
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= limit:
                step = min(_BLOCK, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
        lines = data.splitlines()
        if pos > 0:
            lines = lines[1:]  # the first one may be cut in the middle
        out: list[dict[str, Any]] = []
        for line in lines[-limit:]:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                # A torn line (crash mid-write, disk full) is shown, not hidden or fatal.
                record = {"unparsable": line[:200].decode("utf-8", "replace")}
            if isinstance(record, dict):
                out.append(record)
        return out
