"""Changes to the config file: locked, validated, atomic, audited. The one code path that
the admin API and the CLI both use to write the file.

One change is: take the write lock, read the file and its sha256, apply the change to the
JSON document (key order kept), validate the whole new document with the same code as a
reload (``config.load_bytes``), write it to a temporary file in the same directory, fsync,
check that the file still has the sha256 read at the start (an operator's editor may have
saved meanwhile: that change must not be lost, so this one is refused with 412), rename
over the file, fsync the directory, append the audit line, release the lock.

Writers serialise on ``fcntl.flock`` of a sibling ``<config>.lock``: it works across
processes (API and CLI) and is released by the kernel if a writer dies. The lock is taken
on a separate file because the config itself is replaced by rename, and a lock on a
replaced inode protects nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import jsondoc
from gateway.audit import AuditError, AuditLog, default_path, now_rfc3339
from gateway.config import MAX_CONFIG_BYTES, ConfigError, check_unique_keys, load_bytes

LOCK_TIMEOUT_S = 10.0


class StoreError(Exception):
    """A change that was not made. ``status`` is the HTTP status the admin API answers
    (h11's ``error_status_hint`` idea); ``reason`` a stable word for scripts."""

    def __init__(
        self, status: int, reason: str, message: str, errors: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.errors = errors or []


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, as the audit log records it."""

    name: str
    role: str


@dataclass(slots=True)
class Change:
    """What a mutation did to one environment's document."""

    changed: bool
    values: list[str]
    detail: dict[str, Any] = field(default_factory=dict)


# A mutation edits one environment's JSON object in place; ``where`` is its path
# (``environments[2]``) for error messages.
Mutation = Callable[[dict[str, Any], str], Change]


@dataclass(frozen=True, slots=True)
class EditResult:
    changed: bool
    environment: str
    action: str
    values: list[str]
    detail: dict[str, Any]
    sha256_before: str
    sha256_after: str
    environment_doc: dict[str, Any]
    audit_error: str | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def etag_matches(header: str, sha: str) -> bool:
    """RFC 9110 If-Match against our one strong ETag (``"<sha256>"``); ``*`` matches.

    Unquoted values are accepted too: a person typing ``--if-match`` copies the bare sha.
    """
    for part in header.split(","):
        tag = part.strip().removeprefix("W/").strip('"')
        if tag == "*" or tag == sha:
            return True
    return False


def external_message(path: str) -> str:
    return (
        f"this gateway's config is managed externally (management: external, e.g. a "
        f"Kubernetes ConfigMap or a GitOps repository): change {path} at its source; "
        "the gateway will not write it"
    )


def _write_error(path: str, exc: OSError, doing: str) -> StoreError:
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return StoreError(
        507, "write_failed", f"cannot {doing} for {path}: {why}; the file was left as it was"
    )


class ConfigStore:
    def __init__(
        self,
        path: str,
        audit_log: str | None = None,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> None:
        self.path = os.path.abspath(path)
        self.audit = AuditLog(audit_log or default_path(self.path))
        self.lock_path = self.path + ".lock"
        self.lock_timeout = lock_timeout

    # -- reading ------------------------------------------------------------------------

    def read(self) -> tuple[bytes, str]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise StoreError(
                503, "unreadable", f"cannot read {self.path}: {exc.strerror or exc}"
            ) from None
        return raw, sha256_hex(raw)

    def _document(self, raw: bytes) -> dict[str, Any]:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            why = jsondoc.syntax_error(raw)
            raise StoreError(422, "config_invalid", f"{self.path}: {why}; fix it first") from None
        try:
            # A repeated key is refused here as in a reload: rewriting the file would
            # otherwise settle it silently (orjson keeps the last).
            check_unique_keys(raw)
        except jsondoc.JSONDocError as exc:
            raise StoreError(422, "config_invalid", f"{self.path}: {exc}; fix it first") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("environments"), list):
            raise StoreError(
                422, "config_invalid", f"{self.path} has no environments list; fix it first"
            )
        return doc

    def _refuse_unwritable_kind(self, doc: dict[str, Any]) -> None:
        if doc.get("management") == "external":
            raise StoreError(409, "external", external_message(self.path))
        if os.path.islink(self.path):
            raise StoreError(
                409,
                "symlink",
                f"{self.path} is a symbolic link (to {os.readlink(self.path)}); replacing it "
                "would replace the link, not the file it points to (a ConfigMap mount is "
                "one): edit the target, or point --config at the real file",
            )

    # -- changing -----------------------------------------------------------------------

    def edit(
        self,
        environment: str,
        action: str,
        mutate: Mutation,
        actor: Actor,
        if_match: str | None = None,
    ) -> EditResult:
        # Checked before the lock: a ConfigMap directory is read-only and must not even
        # get a lock file. Checked again under the lock, where it counts.
        raw, _ = self.read()
        self._refuse_unwritable_kind(self._document(raw))
        with self._locked():
            raw, sha = self.read()
            doc = self._document(raw)
            self._refuse_unwritable_kind(doc)
            index, env = self._find(doc, environment)
            if env.get("locked") is True:
                raise StoreError(
                    403,
                    "locked",
                    f"environment {environment!r} is locked: it cannot be changed through "
                    "the admin API or the CLI (edit the file by hand, as its owner)",
                )
            if if_match is not None and not etag_matches(if_match, sha):
                raise StoreError(
                    412,
                    "stale",
                    f"the config changed since that version (If-Match {if_match!r}); it is "
                    f'now "{sha}": read it again and retry',
                )
            change = mutate(env, f"environments[{index}]")
            if not change.changed:
                return EditResult(
                    False, environment, action, change.values, change.detail, sha, sha, env
                )
            new_raw = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
            try:
                load_bytes(new_raw)
            except ConfigError as exc:
                raise StoreError(
                    422, "invalid", "; ".join(exc.errors), errors=list(exc.errors)
                ) from None
            new_sha = sha256_hex(new_raw)
            audit_fd = self._open_audit()
            try:
                self._replace(new_raw, sha)
                record = {
                    "time": now_rfc3339(),
                    "token": actor.name,
                    "role": actor.role,
                    "environment": environment,
                    "action": action,
                    "values": change.values,
                    **{k: v for k, v in change.detail.items() if v},
                    "sha256_before": sha,
                    "sha256_after": new_sha,
                }
                audit_error = None
                try:
                    AuditLog.write(audit_fd, record)
                except OSError as exc:
                    # The change is made and cannot be taken back safely; say so loudly.
                    audit_error = f"change made but not audited: {exc.strerror or exc}"
            finally:
                os.close(audit_fd)
            return EditResult(
                True,
                environment,
                action,
                change.values,
                change.detail,
                sha,
                new_sha,
                env,
                audit_error,
            )

    def _find(self, doc: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
        for i, env in enumerate(doc["environments"]):
            if isinstance(env, dict) and env.get("name") == name:
                return i, env
        raise StoreError(404, "unknown_environment", f"unknown environment {name!r}")

    def _open_audit(self) -> int:
        try:
            fd = self.audit.open()
        except AuditError as exc:
            raise StoreError(
                507, "audit_unwritable", f"{exc}; the change was not made (every change is audited)"
            ) from None
        _give_to_config_owner(fd, self.path)
        return fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            # Read-only is enough for flock, so a lock file another user created (an
            # operator's `sudo gateway endpoints ...`) still works for the gateway's user.
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _write_error(self.path, exc, f"create the lock file {self.lock_path}") from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            pause = 0.002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(
                            503,
                            "busy",
                            f"another writer has held {self.lock_path} for over "
                            f"{self.lock_timeout:g} s; try again",
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _replace(self, data: bytes, expected_sha: str) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise StoreError(503, "unreadable", f"cannot stat {self.path}: {exc}") from None
        mode = stat.S_IMODE(st.st_mode)
        # rename() needs only the directory to be writable, so a file an operator made
        # read-only would be replaced regardless; honour the file's own permission. The
        # mode-bits test also holds for root, whom access() lets write anything.
        if not os.access(self.path, os.W_OK) or not mode & 0o222:
            raise StoreError(
                507,
                "read_only",
                f"{self.path} is read-only (mode {mode:04o}); make it writable to change it "
                "here; the file was left as it was",
            )
        directory, base = os.path.split(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise _write_error(self.path, exc, "create a temporary file") from None
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode)
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fsync(fd)
            except OSError as exc:
                raise _write_error(self.path, exc, "write the new file") from None
            finally:
                os.close(fd)
            _, now_sha = self.read()
            if now_sha != expected_sha:
                raise StoreError(
                    412,
                    "modified_meanwhile",
                    f"{self.path} was changed by someone else while this change was being "
                    "made (an editor?); nothing was written: read it again and retry",
                )
            if os.path.islink(self.path):
                raise StoreError(409, "symlink", f"{self.path} became a symbolic link; refused")
            try:
                os.replace(tmp, self.path)
            except OSError as exc:
                raise _write_error(self.path, exc, "rename the new file into place") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)


def _give_to_config_owner(fd: int, config_path: str) -> None:
    """A new audit log made by root (``sudo gateway endpoints ...``) goes to the config's
    owner, or the gateway, running as that owner, could no longer append to it."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        st, cfg = os.fstat(fd), os.stat(config_path)
        if st.st_size == 0 and (st.st_uid, st.st_gid) != (cfg.st_uid, cfg.st_gid):
            os.fchown(fd, cfg.st_uid, cfg.st_gid)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable. Some file systems refuse fsync on a directory;
    # the rename is still atomic there, only its durability is the file system's.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
