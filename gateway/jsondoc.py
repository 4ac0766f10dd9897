"""The JSON documents the gateway reads from people (the config, the tokens file, admin API
bodies): what it says when one is not JSON, and the rule that no key appears twice.

RFC 8259 leaves an object with a repeated key to the parser ("names SHOULD be unique"):
orjson and msgspec keep the last one, some parsers the first. In a config that is a
setting one reader sees and another does not (``"enforcement": "enforce", ...,
"enforcement": "off"``), so a repeated key is an error here, as in Envoy's strict
proto-JSON parsing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson


class JSONDocError(ValueError):
    """Not a JSON document the gateway accepts; the message says why and where."""


class RepeatedKeyError(JSONDocError):
    """Valid JSON, but an object in it gives a key twice."""


def dumps_pretty(data: Any) -> bytes:
    """JSON for people (the admin API's answers, the CLI's --json), indented."""
    try:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)
    except TypeError:
        # A string that quotes input decoded with surrogateescape (a header or an argument
        # that is not UTF-8) cannot be UTF-8: the standard library writes it as \udcff
        # rather than the answer failing.
        return json.dumps(data, indent=2, ensure_ascii=True).encode()


def syntax_error(raw: bytes) -> str:
    """Why ``raw`` is not JSON (for a document another parser already refused)."""
    if not raw.strip():
        return "empty: no JSON document"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    return "not valid JSON"


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                where = doc.get("name")
                named = isinstance(where, str) and key != "name"
                inside = f" (in the object named {where!r})" if named else ""
                raise RepeatedKeyError(
                    f"the key {key!r} appears twice in one object{inside}: JSON parsers "
                    "disagree on which one counts, so give it once"
                )
            seen.add(key)
    return doc


def _no_constant(name: str) -> Any:
    # The standard library takes NaN and Infinity, which are not JSON (orjson refuses them).
    raise JSONDocError(f"{name} is not JSON")


def _parse(raw: bytes) -> Any:
    try:
        # Decoded here: json.loads would also take UTF-16 and UTF-32 bytes.
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique, parse_constant=_no_constant
        )
    except JSONDocError:
        raise
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise JSONDocError(syntax_error(raw)) from exc


# A span shorter than this is left for the parser: skipping it would save nothing, and
# one without a quote ("[]") could also occur inside a string.
_MIN_SKIP = 256


def check_unique_keys(raw: bytes, lists: Sequence[bytes] = ()) -> None:
    """Raise JSONDocError if an object in ``raw`` (valid JSON) repeats a key.

    The standard library's parser is the only one that hands over every pair, and it
    takes about 15 ms for a 3.6 MB config of 100,000 entries, most of it making the
    entries' strings: too long a step for a reload on the serving loop. ``lists`` are
    the texts of arrays the caller expects to hold only strings (the allowlists, as a
    ``msgspec.Raw`` decode cut them out), in the order they appear in ``raw``: each is
    replaced by ``[]`` before parsing. Such a text holds unescaped quotes, which no JSON
    string can, so where it is found is where the array is; one that holds anything but
    strings is not skipped (an object in it is checked like any other).
    """
    parts: list[bytes] = []
    pos = 0
    for text in lists:
        if len(text) < _MIN_SKIP or not text.startswith(b"[") or b"{" in text:
            continue
        # Found by its head and confirmed whole (a memcmp): find() on the whole text
        # would first preprocess all of it.
        at = raw.find(text[:_MIN_SKIP], pos)
        while at >= 0 and not raw.startswith(text, at):
            at = raw.find(text[:_MIN_SKIP], at + 1)
        if at < 0:
            continue  # not found as given: parsed in full, only slower
        parts += (raw[pos:at], b"[]")
        pos = at + len(text)
    if not parts:
        _parse(raw)
        return
    parts.append(raw[pos:])
    try:
        _parse(b"".join(parts))
    except RepeatedKeyError:
        raise
    except JSONDocError:
        # Only a text found where it was not the array could break the document: check
        # the document as written, so that any error speaks of what the file says.
        _parse(raw)


def loads(raw: bytes) -> Any:
    """Parse a small document (an API body): JSONDocError if not JSON or a key repeats."""
    return _parse(raw)
