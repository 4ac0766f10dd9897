"""gateway check's lint and pre-enablement checks (certificate SANs, redirect rules)."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import load_bytes
from gateway.lint import Finding, lint
from gateway.precheck import InputError, check_certificates, check_redirects


def loaded(envs: list[dict[str, Any]], **top: Any) -> Any:
    for e in envs:
        e.setdefault("upstreams", ["http://127.0.0.1:9"])
    return load_bytes(json.dumps({"environments": envs, **top}).encode())


def find(findings: list[Finding], level: str, where: str, text: str) -> Finding:
    for f in findings:
        if f.level == level and f.where == where and text in f.message:
            return f
    raise AssertionError(
        f"no {level} at {where} with {text!r} in:\n" + "\n".join(map(str, findings))
    )


def test_lint_flags_what_the_issue_lists() -> None:
    cfg = loaded(
        [
            {
                "name": "prod",
                "hostname": "prod.example.net",
                "secure_endpoints": [
                    "www.acme.test",  # 0 ok
                    "WWW.acme.test",  # 1 duplicate (after normalising)
                    "*.shop.acme.test",  # 2 wildcard
                    "a.shop.acme.test",  # 3 covered by [2]
                    "prod.example.net",  # 4 the hostname
                    "12.34.56.78",  # 5 IP literal
                    "[2001:db8::1]:8443",  # 6 IP literal
                    "bücher.acme.test",  # 7 Unicode
                    "*.co.uk",  # 8 public suffix
                ],
            },
            {"name": "bare", "hostname": "bare.example.net"},
        ]
    )
    f = lint(cfg)
    s = "environments[0].secure_endpoints"
    find(f, "warning", f"{s}[1]", "duplicates environments[0].secure_endpoints[0]")
    find(f, "info", f"{s}[1]", "normalised to 'www.acme.test'")
    find(f, "warning", f"{s}[2]", "wildcard '*.shop.acme.test'")
    find(f, "warning", f"{s}[3]", "already covered by '*.shop.acme.test'")
    find(f, "warning", f"{s}[4]", "is the environment's hostname")
    find(f, "warning", f"{s}[5]", "IP-literal entry '12.34.56.78'")
    find(f, "warning", f"{s}[6]", "IP-literal entry '[2001:db8::1]:8443'")
    find(f, "info", f"{s}[7]", "'bücher.acme.test' is the IDN A-label 'xn--bcher-kva.acme.test'")
    find(f, "warning", f"{s}[8]", "covers the public suffix 'co.uk'")
    find(f, "warning", "environments[1]", "'bare.example.net' is the only name allowed")
    assert not [x for x in f if x.where == f"{s}[0]"]


def test_lint_clean_config_has_no_warnings() -> None:
    cfg = loaded([{"name": "p", "hostname": "p.example.net", "secure_endpoints": ["www.a.test"]}])
    assert [x for x in lint(cfg) if x.level == "warning"] == []


def test_lint_reports_overlap_between_environments_and_candidate_diff() -> None:
    cfg = loaded(
        [
            {"name": "a", "hostname": "a.example.net", "secure_endpoints": ["shop.acme.test"]},
            {
                "name": "b",
                "hostname": "b.example.net",
                "secure_endpoints": ["*.acme.test"],
                "candidate_endpoints": ["*.acme.test", "new.test"],
                "enforcement": "report",
            },
        ]
    )
    f = lint(cfg)
    find(
        f,
        "warning",
        "listener default",
        "'shop.acme.test' (a) is also matched by '*.acme.test' (b)",
    )
    find(f, "info", "environments[1].candidate_endpoints", "adds new.test")
    find(f, "info", "environments[1].enforcement", "report")


# -- certificates -------------------------------------------------------------------------


def make_cert(path: Path, dns: list[str], ips: list[str] = ()) -> None:  # type: ignore[assignment]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    with open(path, "ab") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


ENVS = [
    {
        "name": "prod",
        "hostname": "prod.example.net",
        "secure_endpoints": ["www.acme.test", "acme.test:8443", "*.shop.acme.test", "10.0.0.1"],
    },
    {"name": "staging", "hostname": "staging.example.net", "secure_endpoints": ["api.acme.test"]},
]


def test_every_uncovered_san_is_named(tmp_path: Path) -> None:
    pem = tmp_path / "bundle.pem"
    make_cert(
        pem,
        [
            "www.acme.test",  # covered
            "prod.example.net",  # a hostname: covered
            "API.acme.test",  # other environment: covered
            "x.y.shop.acme.test",  # wildcard: covered
            "*.shop.acme.test",  # wildcard SAN under a wildcard entry: covered
            "acme.test",  # only on 8443: NOT covered
            "mail.acme.test",  # NOT covered
            "*.acme.test",  # wildcard SAN, no wildcard entry: NOT covered
        ],
        ["10.0.0.1", "2001:db8::5"],
    )
    make_cert(pem, ["second.acme.test"])  # a chain/bundle: every certificate is read
    total, missing = check_certificates(loaded([dict(e) for e in ENVS]), [str(pem)])
    assert total == 11
    by_host = {u.host: u for u in missing}
    assert set(by_host) == {
        "acme.test",
        "mail.acme.test",
        "*.acme.test",
        "[2001:db8::5]",
        "second.acme.test",
    }
    assert "only on port 8443" in by_host["acme.test"].detail
    assert by_host["second.acme.test"].where == ["CN=second.acme.test"]


def test_unreadable_certificate_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InputError):
        check_certificates(loaded([dict(e) for e in ENVS]), [str(bad)])
    with pytest.raises(InputError):
        check_certificates(loaded([dict(e) for e in ENVS]), [str(tmp_path / "missing.pem")])


# -- redirect rules -----------------------------------------------------------------------


def test_every_uncovered_redirect_destination_is_named_csv(tmp_path: Path) -> None:
    rules = tmp_path / "rules.csv"
    rules.write_text(
        "Module,Original URL,New URL,Redirect Type\n"
        "Shop,https://www.acme.test/old,https://x.shop.acme.test/new,301\n"  # covered
        "Shop,https://www.acme.test/a,/relative/path,301\n"  # same host
        "Blog,https://www.acme.test/blog,https://blog.acme.test/,302\n"  # NOT covered
        "Blog,https://www.acme.test/b2,https://blog.acme.test/other,302\n"  # same host again
        "Api,https://www.acme.test/api,https://acme.test:8443/api,301\n"  # covered (port)
        "Api,https://www.acme.test/api2,https://acme.test/api,301\n"  # NOT covered on 443
        "Intl,https://www.acme.test/de,https://bücher.acme.test/,301\n"  # NOT covered (IDN)
        "Promo,https://www.acme.test/p,http://promo.example.org:8080/x,301\n"  # NOT covered
    )
    total, missing = check_redirects(loaded([dict(e) for e in ENVS]), str(rules))
    assert total == 8
    by_host = {u.host: u for u in missing}
    assert set(by_host) == {
        "blog.acme.test",
        "acme.test",
        "xn--bcher-kva.acme.test",
        "promo.example.org:8080",
    }
    assert by_host["blog.acme.test"].where == [
        "line 4: https://blog.acme.test/",
        "line 5: https://blog.acme.test/other",
    ]


def test_redirects_json_forms(tmp_path: Path) -> None:
    cfg = loaded([dict(e) for e in ENVS])
    as_objects = tmp_path / "r.json"
    as_objects.write_text(
        json.dumps(
            [
                {"original_url": "/a", "new_url": "https://www.acme.test/b"},
                {"original_url": "/c", "New URL": "https://new.acme.test/d"},
            ]
        )
    )
    total, missing = check_redirects(cfg, str(as_objects))
    assert total == 2 and [u.host for u in missing] == ["new.acme.test"]
    as_strings = tmp_path / "s.json"
    as_strings.write_text(json.dumps({"rules": ["https://api.acme.test/", "https://z.test/"]}))
    assert [u.host for u in check_redirects(cfg, str(as_strings))[1]] == ["z.test"]
    broken = tmp_path / "b.json"
    broken.write_text("[{")
    with pytest.raises(InputError):
        check_redirects(cfg, str(broken))
