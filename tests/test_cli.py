"""The management CLI (contract §3): endpoints, enforcement, token, check, explain.

Most cases call ``gateway.cli.main`` in-process (the same argv, exit code and output as the
console script, without paying a Python start-up each); a few run the real ``gateway``
executable to prove the wiring.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.cli import main

GATEWAY = str(Path(sys.executable).with_name("gateway"))


def config() -> dict[str, Any]:
    return {
        "environments": [
            {
                "name": "prod",
                "hostname": "prod.example.net",
                "secure_endpoints": ["www.acme.test", "acme.test"],
                "candidate_endpoints": ["www.acme.test", "acme.test", "new.acme.test"],
                "upstreams": ["http://127.0.0.1:9"],
            },
            {
                "name": "lifetime",
                "hostname": "lt.example.net",
                "secure_endpoints": ["lt.acme.test"],
                "locked": True,
                "upstreams": ["http://127.0.0.1:9"],
            },
        ]
    }


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(config(), indent=2) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def entries(path: Path, env: str = "prod") -> list[str]:
    data = json.loads(path.read_text())
    return next(e for e in data["environments"] if e["name"] == env)["secure_endpoints"]


def audit(path: Path) -> list[dict[str, Any]]:
    p = Path(str(path) + ".audit.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_endpoints_list_add_remove_replace(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    assert run(capsys, "endpoints", "list", "--config", c, "prod") == (
        0,
        "www.acme.test\nacme.test\n",
        "",
    )
    code, out, _ = run(
        capsys, "endpoints", "add", "--config", c, "prod", "B.acme.test", "c.acme.test"
    )
    assert code == 0 and "added b.acme.test, c.acme.test" in out
    code, out, _ = run(capsys, "endpoints", "add", "--config", c, "prod", "b.acme.test")
    assert code == 0 and "already so" in out
    code, out, _ = run(capsys, "endpoints", "remove", "--config", c, "prod", "acme.test")
    assert code == 0 and entries(cfg) == ["www.acme.test", "b.acme.test", "c.acme.test"]
    assert run(capsys, "endpoints", "remove", "--config", c, "prod", "acme.test")[0] == 0
    code, out, _ = run(
        capsys, "endpoints", "replace", "--config", c, "--json", "prod", "z.acme.test"
    )
    assert code == 0 and json.loads(out)["changed"] is True
    assert entries(cfg) == ["z.acme.test"]
    code, out, _ = run(capsys, "endpoints", "list", "--config", c, "--json", "prod")
    listed = json.loads(out)
    assert listed["secure_endpoints"] == ["z.acme.test"] and listed["enforcement"] == "enforce"
    lines = audit(cfg)
    assert [x["action"] for x in lines] == ["add", "remove", "replace"]
    assert all(x["token"].startswith("cli:") and x["role"] == "cli" for x in lines)


def test_enforcement_and_promote(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    code, out, _ = run(capsys, "enforcement", "--config", c, "prod", "report")
    assert code == 0 and "enforcement set to report" in out
    assert run(capsys, "enforcement", "--config", c, "prod", "report")[0] == 0  # already so
    code, out, _ = run(capsys, "endpoints", "promote", "--config", c, "prod")
    assert code == 0 and entries(cfg) == ["www.acme.test", "acme.test", "new.acme.test"]
    code, _, err = run(capsys, "endpoints", "promote", "--config", c, "prod")
    assert code == 1 and "no candidate_endpoints" in err


def test_refusals_exit_1(cfg: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    c = str(cfg)
    before = cfg.read_bytes()
    code, _, err = run(capsys, "endpoints", "add", "--config", c, "prod", "https://x.test/")
    assert code == 1 and "environments[0].secure_endpoints[2]: 'https://x.test/': a scheme" in err
    code, _, err = run(capsys, "endpoints", "add", "--config", c, "lifetime", "x.test")
    assert code == 1 and "locked" in err
    code, _, err = run(capsys, "endpoints", "add", "--config", c, "nope", "x.test")
    assert code == 1 and "unknown environment 'nope'" in err
    code, _, err = run(
        capsys, "endpoints", "add", "--config", c, "--if-match", "0" * 64, "prod", "x.test"
    )
    assert code == 1 and "changed since" in err
    code, out, _ = run(capsys, "enforcement", "--config", c, "--json", "lifetime", "off")
    assert code == 1 and json.loads(out)["reason"] == "locked"
    assert cfg.read_bytes() == before and audit(cfg) == []
    # argparse refuses a mode that does not exist: usage error.
    assert run(capsys, "enforcement", "--config", c, "prod", "block")[0] == 2


def test_external_management_refuses_every_write(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = config()
    data["management"] = "external"
    cfg.write_text(json.dumps(data))
    before = cfg.read_bytes()
    c = str(cfg)
    for argv in (
        ("endpoints", "add", "--config", c, "prod", "x.test"),
        ("endpoints", "remove", "--config", c, "prod", "acme.test"),
        ("endpoints", "replace", "--config", c, "prod", "x.test"),
        ("endpoints", "promote", "--config", c, "prod"),
        ("enforcement", "--config", c, "prod", "off"),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "managed externally" in err and c in err, argv
    assert cfg.read_bytes() == before


def test_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "token", "--name", "ci", "--role", "viewer", "--json")
    data = json.loads(out)
    assert code == 0 and data["entry"]["name"] == "ci" and data["entry"]["role"] == "viewer"
    assert data["entry"]["sha256"] == hashlib.sha256(data["token"].encode()).hexdigest()
    code, out, _ = run(capsys, "token", "--name", "ops", "--role", "admin")
    assert code == 0 and "shown only now" in out and '"role":"admin"' in out


def _cert(path: Path, names: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_check_exit_codes_and_prechecks(
    cfg: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    c = str(cfg)
    # The locked environment's list is fine; prod's candidate list only adds: info only.
    code, out, _ = run(capsys, "check", "--config", c)
    assert code == 0 and "valid (2 environments" in out and "0 warnings" in out

    pem = tmp_path / "site.pem"
    _cert(pem, ["www.acme.test", "acme.test", "shop.acme.test", "pay.acme.test"])
    redirects = tmp_path / "rules.csv"
    redirects.write_text(
        "Original URL,New URL\n/old,https://www.acme.test/new\n/x,https://blog.acme.test/\n"
    )
    code, out, _ = run(
        capsys, "check", "--config", c, "--cert", str(pem), "--redirects", str(redirects)
    )
    assert code == 1
    assert "uncovered: shop.acme.test" in out and "uncovered: pay.acme.test" in out
    assert "uncovered: blog.acme.test" in out and "uncovered: www.acme.test" not in out
    code, out, _ = run(
        capsys, "check", "--config", c, "--json", "--cert", str(pem), "--redirects", str(redirects)
    )
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert {u["host"] for u in report["certificates"]["uncovered"]} == {
        "shop.acme.test",
        "pay.acme.test",
    }
    assert [u["host"] for u in report["redirects"]["uncovered"]] == ["blog.acme.test"]

    # Warnings pass, unless --strict.
    data = config()
    data["environments"][0]["secure_endpoints"].append("12.34.56.78")
    cfg.write_text(json.dumps(data))
    code, out, _ = run(capsys, "check", "--config", c)
    assert code == 0 and "warning: environments[0].secure_endpoints[2]: IP-literal" in out
    assert run(capsys, "check", "--config", c, "--strict")[0] == 1

    # Invalid: 1; unparsable or unreadable: 2; an unreadable --cert: 2.
    data["environments"][0]["secure_endpoints"].append("*")
    cfg.write_text(json.dumps(data))
    code, _, err = run(capsys, "check", "--config", c)
    assert code == 1 and "environments[0].secure_endpoints[3]" in err
    cfg.write_text("{not json")
    assert run(capsys, "check", "--config", c)[0] == 2
    assert run(capsys, "check", "--config", str(tmp_path / "missing.json"))[0] == 2
    cfg.write_text(json.dumps(config()))
    assert run(capsys, "check", "--config", c, "--cert", str(tmp_path / "missing.pem"))[0] == 2


def test_explain_exit_codes(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = str(cfg)
    assert run(capsys, "explain", "--config", c, "www.acme.test")[0] == 0
    assert run(capsys, "explain", "--config", c, "evil.test")[0] == 1
    assert run(capsys, "explain", "--config", c, "bad host")[0] == 1
    assert run(capsys, "explain", "--config", c, "--listener", "nope", "a.test")[0] == 2


def test_real_executable(cfg: Path) -> None:
    """The console script itself: exit code, output, and the file it leaves."""
    add = subprocess.run(
        [GATEWAY, "endpoints", "add", "--config", str(cfg), "prod", "real.acme.test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert add.returncode == 0, add.stderr
    assert "real.acme.test" in entries(cfg)
    refused = subprocess.run(
        [GATEWAY, "endpoints", "add", "--config", str(cfg), "lifetime", "x.test"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1 and "locked" in refused.stderr


# -- bad input: a clear message and the right exit code, never a traceback ------------------


def test_run_refuses_unusable_options_before_starting(cfg: Path, tmp_path: Path) -> None:
    """Exit 2 with one line, for --listen as for --admin-listen; with --workers a worker
    that could not open its access log would die and be replaced for ever."""
    for extra, why in (
        (["--listen", "abc"], "--listen: 'abc' is not host:port"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--workers", "2", "--listen", "abc"], "--listen"),
        (["--access-log", str(tmp_path / "no" / "dir" / "a.log")], "No such file or directory"),
        (["--workers", "2", "--access-log", str(tmp_path)], "Is a directory"),
    ):
        argv = [GATEWAY, "run", "--config", str(cfg), "--admin-listen", "127.0.0.1:0", *extra]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (extra, done.stderr)
        assert why in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)


def test_arguments_that_are_not_utf8(
    cfg: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A shell hands Python such bytes as surrogates (surrogateescape): --json output
    writes them escaped instead of failing."""
    code, out, _ = run(capsys, "explain", "--config", str(cfg), "--json", "b\udcfccher")
    assert code == 1 and json.loads(out)["action"] == "refuse" and "\\udcfc" in out
    code, out, _ = run(capsys, "check", "--json", "--config", str(tmp_path / "\udcfc.json"))
    assert code == 2 and json.loads(out)["ok"] is False


@pytest.mark.parametrize("name", ["", "two\nlines", "x" * 129, "\udcfc", "tab\there"])
def test_token_refuses_a_name_the_tokens_file_would_refuse(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "token", "--name", name, "--role", "viewer")
    assert code == 2 and out == "" and "1-128 printable characters" in err


def test_check_refuses_redirect_files_with_no_rules(
    cfg: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Prose, binary or empty must not pass as "0 rules, 0 not covered"."""
    rules = tmp_path / "rules.csv"
    for content in (b"", b"\x00\x01\x02\xff" * 64, b"see the wiki for our redirects\n"):
        rules.write_bytes(content)
        code, _, err = run(capsys, "check", "--config", str(cfg), "--redirects", str(rules))
        assert code == 2 and "rules.csv" in err, (content[:20], err)


def test_blocked_hosts_refuses_an_answer_from_something_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A URL that answers JSON but is not the admin API (an upstream, a health endpoint)
    must not read as "no refused hosts recorded"."""
    import http.server
    import threading

    class JSONHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok", "environments": ["prod"]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JSONHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, out, err = run(capsys, "blocked-hosts", "--admin", url, "--token", "x")
        assert code == 1 and "no refused hosts" not in out
        assert "did not answer as a gateway's admin API" in err
    finally:
        server.shutdown()
        server.server_close()
