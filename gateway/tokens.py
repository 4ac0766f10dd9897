"""Admin API bearer tokens: the tokens file, and checking a presented token against it.

The file (``--admin-tokens``, kept apart from the allowlist) is a JSON list of
``{"name": ..., "role": "admin"|"viewer", "sha256": "<hex sha256 of the token>"}``: only
hashes are stored, so the file can be read by more people than the tokens' holders. Tokens
are long random strings (``gateway token``), so a plain sha256 is enough; a slow password
hash would only make every API call slower.

The file is re-read when its identity, size or mtime changes (one ``stat`` per API call),
like the config. A file that fails to parse keeps the last good set, as a bad config does;
at start-up it is an error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import Literal

import msgspec

from gateway import jsondoc

log = logging.getLogger("gateway.tokens")

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
MAX_TOKENS_BYTES = 1024 * 1024


class TokensError(ValueError):
    """The tokens file cannot be used; the message names the file and the entry."""


class TokenEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    role: Role
    sha256: str


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """admin may do everything a viewer may."""
        return self.role == "admin" or role == "viewer"


def hash_token(token: str) -> str:
    # aiohttp decodes header bytes that are not UTF-8 with surrogateescape: hash the bytes
    # as they came (no token we issue contains them, so such a value simply fails to match).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str | None:
    """Why a token name cannot be used (it names the token in the audit log), or None."""
    if not name or len(name) > 128 or not name.isprintable():
        return "1-128 printable characters"
    return None


def new_token() -> str:
    # 32 random bytes, URL-safe base64: 256 bits, fits a header and a shell variable.
    return "gw_" + secrets.token_urlsafe(32)


def entry_for(name: str, role: Role, token: str) -> dict[str, str]:
    return {"name": name, "role": role, "sha256": hash_token(token)}


def parse_tokens(raw: bytes, path: str = "tokens file") -> tuple[TokenEntry, ...]:
    try:
        entries = msgspec.json.decode(raw, type=list[TokenEntry])
    except msgspec.ValidationError as exc:
        # "{bad" fails msgspec's type check before its syntax: say it is not JSON.
        try:
            jsondoc.loads(raw)
        except jsondoc.JSONDocError as not_json:
            raise TokensError(f"{path}: {not_json}") from None
        # "Invalid enum value 'root' - at `$[0].role`" -> "[0].role: Invalid enum value 'root'"
        msg, sep, at = str(exc).rpartition(" - at `")
        where = at.rstrip("`").removeprefix("$") if sep else ""
        raise TokensError(f"{path}: {where}: {msg}" if sep else f"{path}: {exc}") from None
    except msgspec.DecodeError:
        raise TokensError(f"{path}: {jsondoc.syntax_error(raw)}") from None
    try:
        jsondoc.check_unique_keys(raw)
    except jsondoc.JSONDocError as exc:
        raise TokensError(f"{path}: {exc}") from None
    names: set[str] = set()
    hashes: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{path}: [{i}]"
        if (bad_name := check_name(e.name)) is not None:
            raise TokensError(f"{where}.name: {bad_name}")
        if e.name in names:
            raise TokensError(f"{where}.name: duplicate name {e.name!r} (the audit log names it)")
        if not _HEX64.match(e.sha256):
            raise TokensError(f"{where}.sha256: 64 lowercase hex digits (sha256 of the token)")
        if e.sha256 in hashes:
            raise TokensError(f"{where}.sha256: the same token is listed twice")
        names.add(e.name)
        hashes.add(e.sha256)
    return tuple(entries)


def _stat_key(path: str) -> tuple[int, int, int, int]:
    # os.stat follows symlinks: a Kubernetes Secret mount swaps the target, which changes
    # the inode here.
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TokenStore:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._key: tuple[int, int, int, int] | None = None
        self._entries: tuple[TokenEntry, ...] = ()
        try:
            self._key = _stat_key(self.path)
            self._entries = self._load()
        except OSError as exc:
            raise TokensError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _load(self) -> tuple[TokenEntry, ...]:
        with open(self.path, "rb") as f:
            raw = f.read(MAX_TOKENS_BYTES + 1)
        if len(raw) > MAX_TOKENS_BYTES:
            raise TokensError(f"{self.path}: larger than {MAX_TOKENS_BYTES} bytes")
        return parse_tokens(raw, self.path)

    def refresh(self) -> None:
        try:
            key = _stat_key(self.path)
        except OSError as exc:
            if self._key is not None:
                log.error("tokens file %s: %s; keeping the last good tokens", self.path, exc)
                self._key = None
            return
        if key == self._key:
            return
        self._key = key
        try:
            self._entries = self._load()
        except (OSError, TokensError) as exc:
            log.error("tokens file reload failed, keeping the last good tokens: %s", exc)
            return
        log.info("tokens file reloaded: %d tokens", len(self._entries))

    def authenticate(self, authorization: str | None) -> Identity | None:
        """The identity of an ``Authorization: Bearer ...`` value, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 1024:
            return None
        self.refresh()
        presented = hash_token(token)
        found: TokenEntry | None = None
        # Compare with every entry, without stopping at a match: the time taken does not
        # tell which entry (or how much of a hash) matched.
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.sha256):
                found = entry
        return Identity(found.name, found.role) if found is not None else None
