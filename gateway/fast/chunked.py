"""Strict chunked framing (RFC 9112 §7.1), sans-IO: feed a request body's raw bytes, learn
where it ends, or that it is malformed.

llhttp already refuses every malformed shape here. aiohttp's pure-Python parser (the
fallback under ``AIOHTTP_NO_EXTENSIONS=1``) does not: it takes a 17-digit chunk size
(``int(..., 16)`` has no limit, where a 64-bit parser wraps ``2**64 + 5`` to 5 and reads
the rest as a request: the "chunk size overflow" desync) and a NUL or other control byte
in a chunk extension. With the Python parser, the fast engine runs this check over the
body bytes before the parser sees them, so both parsers refuse the same framing.
"""

from __future__ import annotations

import re
from typing import Final

# At most 16 hex digits: the size fits in 64 bits, as llhttp requires (RFC 9112 §7.1:
# "anticipate potentially large hexadecimal numerals and prevent parsing errors due to
# integer conversion overflows").
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
# (joined, not added: see gateway/fast/__init__.py on `bytes + bytes` once compiled)
_SIZE_LINE = re.compile(
    b"".join((
        rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*", _TOKEN, rb"(?:[ \t]*=[ \t]*(?:",
        _TOKEN, rb"|", _QUOTED, rb"))?)*)",
    ))
)  # fmt: skip
_FIELD_LINE = re.compile(b"".join((_TOKEN, rb":[\t -~\x80-\xff]*")))
CR: Final = 0x0D  # an int, not b"\r": see headers.UNDERSCORE
MAX_LINE = 8190  # aiohttp's default max_line_size
MAX_TRAILERS = 64 * 1024

_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER = range(5)


class ChunkedFramingError(ValueError):
    pass


class ChunkedFraming:
    __slots__ = ("_left", "_line", "_state", "_trailers")

    def __init__(self) -> None:
        self._state = _SIZE
        self._line = b""
        self._left = 0
        self._trailers = 0

    def feed(self, data: bytes) -> int:
        """How many bytes of ``data`` complete the body, or -1 while it goes on."""
        i = 0
        n = len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                i += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_CR
            elif state in (_DATA_CR, _DATA_LF):
                want = 13 if state == _DATA_CR else 10
                if data[i] != want:
                    raise ChunkedFramingError("chunk data not followed by CRLF")
                i += 1
                self._state = _DATA_LF if state == _DATA_CR else _SIZE
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self._line += data[i:]
                    if len(self._line) > MAX_LINE:
                        raise ChunkedFramingError("chunk line too long")
                    return -1
                line = b"".join((self._line, data[i : j + 1]))
                self._line = b""
                i = j + 1
                if len(line) > MAX_LINE:
                    raise ChunkedFramingError("chunk line too long")
                if line[-2:] != b"\r\n" or CR in line[:-2]:
                    raise ChunkedFramingError("chunk line not ended by CRLF")
                line = line[:-2]
                if state == _SIZE:
                    m = _SIZE_LINE.fullmatch(line)
                    if m is None:
                        raise ChunkedFramingError(f"bad chunk size line {line[:40]!r}")
                    self._left = int(m.group(1), 16)
                    self._state = _DATA if self._left else _TRAILER
                elif not line:
                    return i  # the empty line after the last chunk and its trailers
                else:
                    self._trailers += len(line)
                    if self._trailers > MAX_TRAILERS or _FIELD_LINE.fullmatch(line) is None:
                        raise ChunkedFramingError("bad trailer field")
        return -1
