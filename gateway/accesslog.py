"""Optional access log: one JSON line per request, written by a background thread.

The request path only builds a small dict and puts it on a queue (logging's QueueHandler);
formatting and the write happen in the QueueListener's thread, off the hot path's critical
section. The file handler is a WatchedFileHandler, so logrotate can move the file away and
the next line goes to a new file; SIGUSR1 also forces a reopen.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
from typing import Any

import orjson


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = record.msg if isinstance(record.msg, dict) else {"msg": record.msg}
        return orjson.dumps(data).decode()


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    # The stock prepare() formats on the caller's thread; the point is not to.
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class AccessLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        self._file.setFormatter(_JSONFormatter())
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, self._file)
        self.logger = logging.getLogger(f"gateway.access.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(_PassThroughQueueHandler(self._queue))
        self._listener.start()

    def write(self, entry: dict[str, Any]) -> None:
        self.logger.info(entry)

    def reopen(self) -> None:
        # WatchedFileHandler reopens when the file was moved; this covers "copytruncate"
        # style rotation and operators who signal explicitly.
        self._file.acquire()
        try:
            if self._file.stream is not None:
                self._file.stream.close()
            self._file.stream = self._file._open()
        finally:
            self._file.release()

    def close(self) -> None:
        self._listener.stop()
        self._file.close()
