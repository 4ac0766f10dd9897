"""store.ConfigStore + edits: the one write path of the admin API and the CLI, on real files."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway import edits, store
from gateway.audit import AuditLog
from gateway.config import load_file
from gateway.store import Actor, ConfigStore, StoreError, etag_matches, sha256_hex

ME = Actor("tester", "admin")


def base_config() -> dict[str, Any]:
    return {
        "environments": [
            {
                "name": "prod",
                "hostname": "prod.example.net",
                "secure_endpoints": ["www.acme.test", "*.shop.acme.test"],
                "upstreams": ["http://127.0.0.1:9"],
            },
            {
                "name": "staging",
                "hostname": "staging.example.net",
                "candidate_endpoints": ["new.acme.test", "Staging.Acme.test"],
                "enforcement": "report",
                "upstreams": ["http://127.0.0.1:9"],
            },
            {
                "name": "lifetime",
                "hostname": "lt.example.net",
                "locked": True,
                "upstreams": ["http://127.0.0.1:9"],
            },
        ],
        "trusted_proxies": [],
    }


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(base_config(), indent=4))
    return path


def doc(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_bytes())
    return result


def env_doc(path: Path, name: str) -> dict[str, Any]:
    return next(e for e in doc(path)["environments"] if e["name"] == name)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    audit = Path(str(path) + ".audit.jsonl")
    if not audit.exists():
        return []
    return [json.loads(line) for line in audit.read_text().splitlines()]


def refused(exc: pytest.ExceptionInfo[StoreError], status: int, reason: str) -> None:
    assert (exc.value.status, exc.value.reason) == (status, reason), exc.value.message


def test_add_writes_canonical_form_format_and_audit(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    before = cfg.read_bytes()
    result = st.edit("prod", "add", edits.add(["API.Acme.test.", "bücher.acme.test"]), ME)
    assert result.changed
    assert result.values == ["api.acme.test", "xn--bcher-kva.acme.test"]
    raw = cfg.read_bytes()
    assert raw.endswith(b"}\n") and b'\n  "environments": [' in raw  # 2-space indent
    assert list(doc(cfg)) == ["environments", "trusted_proxies"]  # key order kept
    assert list(env_doc(cfg, "prod")) == ["name", "hostname", "secure_endpoints", "upstreams"]
    assert env_doc(cfg, "prod")["secure_endpoints"][-2:] == result.values
    assert result.sha256_before == sha256_hex(before)
    assert result.sha256_after == sha256_hex(raw) == load_file(str(cfg)).sha256
    [line] = audit_lines(cfg)
    assert line["token"] == "tester" and line["role"] == "admin"
    assert line["environment"] == "prod" and line["action"] == "add"
    assert line["values"] == result.values
    assert line["sha256_before"] == result.sha256_before
    assert line["sha256_after"] == result.sha256_after
    assert line["time"].endswith("Z")


def test_add_already_present_is_no_change_and_no_write(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    before = cfg.read_bytes()
    result = st.edit("prod", "add", edits.add(["WWW.acme.test"]), ME)
    assert not result.changed and result.sha256_before == result.sha256_after
    assert cfg.read_bytes() == before
    assert audit_lines(cfg) == []


def test_remove_is_idempotent_and_matches_any_spelling(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    assert st.edit("prod", "remove", edits.remove(["www.ACME.test."]), ME).changed
    assert env_doc(cfg, "prod")["secure_endpoints"] == ["*.shop.acme.test"]
    again = st.edit("prod", "remove", edits.remove(["www.acme.test"]), ME)
    assert not again.changed and again.detail == {"absent": ["www.acme.test"]}
    assert len(audit_lines(cfg)) == 1


def test_new_key_goes_where_the_schema_puts_it(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    st.edit("staging", "add", edits.add(["s.acme.test"]), ME)
    keys = list(env_doc(cfg, "staging"))
    assert keys.index("secure_endpoints") == keys.index("hostname") + 1


def test_replace_enforcement_promote(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    r = st.edit("prod", "replace", edits.replace(["b.acme.test", "A.acme.test", "b.acme.test"]), ME)
    assert r.values == ["b.acme.test", "a.acme.test"]
    assert r.detail == {
        "added": ["b.acme.test", "a.acme.test"],
        "removed": ["*.shop.acme.test", "www.acme.test"],
    }
    assert not st.edit("prod", "replace", edits.replace(["b.acme.test", "a.acme.test"]), ME).changed

    r = st.edit("prod", "enforcement", edits.set_enforcement("report"), ME)
    assert r.changed and r.detail == {"previous": "enforce"}
    assert env_doc(cfg, "prod")["enforcement"] == "report"
    assert not st.edit("prod", "enforcement", edits.set_enforcement("report"), ME).changed
    with pytest.raises(StoreError) as exc:
        st.edit("prod", "enforcement", edits.set_enforcement("block"), ME)
    refused(exc, 422, "invalid")

    r = st.edit("staging", "promote", edits.promote(), ME)
    assert r.values == ["new.acme.test", "staging.acme.test"]
    staging = env_doc(cfg, "staging")
    assert staging["secure_endpoints"] == r.values and staging["candidate_endpoints"] is None
    with pytest.raises(StoreError) as exc:
        st.edit("staging", "promote", edits.promote(), ME)
    refused(exc, 409, "no_candidate")
    assert [a["action"] for a in audit_lines(cfg)] == ["replace", "enforcement", "promote"]


@pytest.mark.parametrize(
    ("mutation", "where"),
    [
        (edits.add(["bad host"]), "environments[0].secure_endpoints[2]: 'bad host'"),
        (edits.add(["ok.acme.test", "*"]), "environments[0].secure_endpoints[3]: '*'"),
        (edits.replace(["a.test", "http://x.test/"]), "environments[0].secure_endpoints[1]"),
        (edits.remove(["a b"]), "'a b'"),
    ],
)
def test_invalid_host_is_422_with_path_and_file_untouched(
    cfg: Path, mutation: store.Mutation, where: str
) -> None:
    before = cfg.read_bytes()
    with pytest.raises(StoreError) as exc:
        ConfigStore(str(cfg)).edit("prod", "x", mutation, ME)
    refused(exc, 422, "invalid_host")
    assert exc.value.message.startswith(where)
    assert cfg.read_bytes() == before


def test_whole_document_is_validated_like_the_file(cfg: Path) -> None:
    # staging's hostname in prod's list: both environments would claim it on one listener.
    with pytest.raises(StoreError) as exc:
        ConfigStore(str(cfg)).edit("prod", "add", edits.add(["staging.example.net"]), ME)
    refused(exc, 422, "invalid")
    assert "claimed by both 'prod' and 'staging'" in exc.value.message


def test_a_file_that_says_two_things_is_not_rewritten(cfg: Path) -> None:
    """A repeated key would be settled silently by rewriting the file (orjson keeps the
    last): the edit is refused, as the reload refuses the file, and nothing changes."""
    raw = cfg.read_bytes().replace(
        b'"name": "prod"', b'"enforcement": "off", "enforcement": "enforce", "name": "prod"'
    )
    for broken, why in ((raw, "'enforcement' appears twice"), (b"\xff{}", "not UTF-8")):
        cfg.write_bytes(broken)
        with pytest.raises(StoreError) as exc:
            ConfigStore(str(cfg)).edit("staging", "add", edits.add(["a.acme.test"]), ME)
        refused(exc, 422, "config_invalid")
        assert why in exc.value.message and cfg.read_bytes() == broken
    assert audit_lines(cfg) == []


def test_unknown_locked_external(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    with pytest.raises(StoreError) as exc:
        st.edit("nope", "add", edits.add(["a.test"]), ME)
    refused(exc, 404, "unknown_environment")
    with pytest.raises(StoreError) as exc:
        st.edit("lifetime", "add", edits.add(["a.test"]), ME)
    refused(exc, 403, "locked")


def test_external_management_refuses_and_touches_nothing(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    d = doc(cfg)
    d["management"] = "external"
    cfg.write_text(json.dumps(d))
    before = cfg.read_bytes()
    with pytest.raises(StoreError) as exc:
        st.edit("prod", "add", edits.add(["a.test"]), ME)
    refused(exc, 409, "external")
    assert str(cfg) in exc.value.message and "at its source" in exc.value.message
    assert cfg.read_bytes() == before
    assert not Path(str(cfg) + ".lock").exists()  # not even a lock file
    assert audit_lines(cfg) == []


def test_if_match(cfg: Path) -> None:
    st = ConfigStore(str(cfg))
    _, sha = st.read()
    with pytest.raises(StoreError) as exc:
        st.edit("prod", "add", edits.add(["a.test"]), ME, if_match='"' + "0" * 64 + '"')
    refused(exc, 412, "stale")
    r = st.edit("prod", "add", edits.add(["a.test"]), ME, if_match=f'"{sha}"')
    assert r.changed
    assert st.edit("prod", "add", edits.add(["b.test"]), ME, if_match="*").changed
    assert etag_matches(f'W/"x", "{sha}"', sha) and etag_matches(sha, sha)
    assert not etag_matches('"abc"', sha)


def test_editor_saving_meanwhile_is_not_overwritten(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    editor_version = json.dumps(base_config(), indent=1).encode()
    real = store._write_all

    def write_then_editor_saves(fd: int, data: bytes) -> None:
        real(fd, data)
        cfg.write_bytes(editor_version)

    monkeypatch.setattr(store, "_write_all", write_then_editor_saves)
    with pytest.raises(StoreError) as exc:
        ConfigStore(str(cfg)).edit("prod", "add", edits.add(["a.test"]), ME)
    refused(exc, 412, "modified_meanwhile")
    assert cfg.read_bytes() == editor_version
    assert sorted(p.name for p in cfg.parent.iterdir()) == [
        "gw.json",
        "gw.json.audit.jsonl",
        "gw.json.lock",
    ]
    assert audit_lines(cfg) == []


def test_mode_is_kept(cfg: Path) -> None:
    cfg.chmod(0o640)
    ConfigStore(str(cfg)).edit("prod", "add", edits.add(["a.test"]), ME)
    assert cfg.stat().st_mode & 0o777 == 0o640


def test_symlink_is_refused_and_left_alone(cfg: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(cfg.name)
    before = cfg.read_bytes()
    with pytest.raises(StoreError) as exc:
        ConfigStore(str(link)).edit("prod", "add", edits.add(["a.test"]), ME)
    refused(exc, 409, "symlink")
    assert "symbolic link" in exc.value.message
    assert link.is_symlink() and cfg.read_bytes() == before


def test_read_only_file_is_refused(cfg: Path) -> None:
    cfg.chmod(0o444)
    before = cfg.read_bytes()
    with pytest.raises(StoreError) as exc:
        ConfigStore(str(cfg)).edit("prod", "add", edits.add(["a.test"]), ME)
    refused(exc, 507, "read_only")
    assert "read-only" in exc.value.message
    assert cfg.read_bytes() == before and cfg.stat().st_mode & 0o777 == 0o444


def test_full_disk_leaves_the_file_and_no_temp(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "_write_all", full)
    before = cfg.read_bytes()
    with pytest.raises(StoreError) as exc:
        ConfigStore(str(cfg)).edit("prod", "add", edits.add(["a.test"]), ME)
    refused(exc, 507, "write_failed")
    assert "the disk is full" in exc.value.message and "left as it was" in exc.value.message
    assert cfg.read_bytes() == before
    assert not [p for p in cfg.parent.iterdir() if p.name.endswith(".tmp")]
    assert audit_lines(cfg) == []


def test_unwritable_audit_log_refuses_the_change(cfg: Path, tmp_path: Path) -> None:
    before = cfg.read_bytes()
    st = ConfigStore(str(cfg), audit_log=str(tmp_path / "missing-dir" / "audit.jsonl"))
    with pytest.raises(StoreError) as exc:
        st.edit("prod", "add", edits.add(["a.test"]), ME)
    refused(exc, 507, "audit_unwritable")
    assert cfg.read_bytes() == before


def test_lock_held_elsewhere_times_out(cfg: Path) -> None:
    fd = os.open(str(cfg) + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreError) as exc:
            ConfigStore(str(cfg), lock_timeout=0.2).edit("prod", "add", edits.add(["a.test"]), ME)
        refused(exc, 503, "busy")
    finally:
        os.close(fd)


def test_concurrent_writers_lose_nothing(cfg: Path) -> None:
    hosts = [f"h{i}.acme.test" for i in range(40)]
    errors: list[BaseException] = []

    def worker(chunk: list[str]) -> None:
        st = ConfigStore(str(cfg))  # its own descriptors: flock excludes within a process too
        for h in chunk:
            try:
                st.edit("prod", "add", edits.add([h]), Actor(f"t-{chunk[0]}", "admin"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(hosts[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(env_doc(cfg, "prod")["secure_endpoints"]) == {
        "www.acme.test",
        "*.shop.acme.test",
        *hosts,
    }
    lines = audit_lines(cfg)
    assert len(lines) == 40
    # Serialised: each change starts from the version the previous one wrote.
    for prev, nxt in itertools.pairwise(lines):
        assert nxt["sha256_before"] == prev["sha256_after"]


def test_audit_tail(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    assert log.tail(5) == []
    log.append({"n": 0, "pad": "x" * 40})
    # The rest written in one go (append fsyncs every line); > 64 KiB, so tail reads blocks.
    with open(log.path, "a") as f:
        f.writelines(json.dumps({"n": i, "pad": "x" * 40}) + "\n" for i in range(1, 3000))
    assert [r["n"] for r in log.tail(3)] == [2997, 2998, 2999]
    assert len(log.tail(2500)) == 2500 and log.tail(2500)[0]["n"] == 500
