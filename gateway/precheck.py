"""Pre-enablement checks (the product page's "check your endpoint configurations" and
"check redirect rules"): names a certificate or a redirect rule sends clients to that no
environment would let through once enforced.

A name counts as covered when some environment allows it on the port clients will use:
443 for a certificate name, the URL's port (or its scheme's default) for a redirect. An
entry ``acme.com:8443`` does not cover a certificate's ``acme.com``: browsers would come on
443 and be refused.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import idna
import orjson
from cryptography import x509

from gateway import hosts
from gateway.config import LoadedConfig

MAX_INPUT_BYTES = 16 * 1024 * 1024
# Column names a redirect export may use for the destination (Service Center's
# "New URL" among them), compared lowercase without punctuation.
_DEST_KEYS = ("newurl", "destination", "destinationurl", "target", "targeturl", "to", "location")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


class InputError(Exception):
    """A --cert or --redirects file that cannot be read or understood (exit 2)."""


@dataclass(slots=True)
class Uncovered:
    host: str
    source: str  # the file
    where: list[str] = field(default_factory=list)  # certificate subjects or rule lines
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "source": self.source,
            "where": self.where,
            "detail": self.detail,
        }


class Coverage:
    """Which names the config's environments allow, across every environment."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.exact: set[str] = set()
        self.ported: dict[str, set[int]] = {}
        self.wild: set[str] = set()
        for name in loaded.hostnames:
            self.exact.add(loaded.hostnames[name].host)
            for e in loaded.entries[name]:
                if e.kind == "wildcard":
                    self.wild.add(e.host)
                elif e.port is None:
                    self.exact.add(e.host)
                else:
                    self.ported.setdefault(e.host, set()).add(e.port)

    def covers(self, host: str, port: int) -> tuple[bool, str]:
        """Covered or not, and a detail for a person when not."""
        if host in self.exact or port in self.ported.get(host, ()):
            return True, ""
        if host.startswith("*."):
            suffix = host[2:]
            parents = [suffix, *hosts.wildcard_candidates(suffix)]
            if any(s in self.wild for s in parents):
                return True, ""
            return False, "a wildcard name: only a wildcard entry covering it lets every name in"
        if not host.startswith("[") and any(
            s in self.wild for s in hosts.wildcard_candidates(host)
        ):
            return True, ""
        other = sorted(self.ported.get(host, ()))
        if other:
            return False, f"allowed only on port {', '.join(map(str, other))}, not {port}"
        return False, ""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{path}: larger than {MAX_INPUT_BYTES} bytes")
    return data


def _normalise_name(name: str) -> str | None:
    """A certificate or URL host as the gateway would compare it, or None if unusable."""
    name = name.strip().lower()
    star = name.startswith("*.")
    body = name[2:] if star else name
    if not body.isascii():
        try:
            body = idna.encode(body.rstrip("."), uts46=True, transitional=False).decode()
        except UnicodeError:
            return None
    try:
        auth = hosts.parse_host(body)
    except hosts.HostError:
        return None
    if auth.port is not None or (star and auth.kind != "name"):
        return None
    return ("*." if star else "") + auth.host


# -- certificates -------------------------------------------------------------------------


def certificate_names(path: str) -> list[tuple[str, str]]:
    """(name, subject) for every SAN DNS name and IP address of every certificate in a PEM."""
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise InputError(f"{path}: no PEM certificate could be read ({exc})") from None
    out: list[tuple[str, str]] = []
    for cert in certs:
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue  # browsers ignore the CN since 2017; nothing to cover
        out.extend((n, subject) for n in san.get_values_for_type(x509.DNSName))
        for ip in san.get_values_for_type(x509.IPAddress):
            text = f"[{ip.compressed}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
            out.append((text, subject))
    return out


def check_certificates(loaded: LoadedConfig, paths: Iterable[str]) -> tuple[int, list[Uncovered]]:
    cov = Coverage(loaded)
    total = 0
    found: dict[str, Uncovered] = {}
    for path in paths:
        for raw_name, subject in certificate_names(path):
            total += 1
            name = _normalise_name(raw_name)
            if name is None:
                key = f"{path}\0{raw_name}"
                found.setdefault(key, Uncovered(raw_name, path, [], "not a valid host name"))
                found[key].where.append(subject)
                continue
            ok, detail = cov.covers(name, 443)
            if not ok:
                key = f"{path}\0{name}"
                found.setdefault(key, Uncovered(name, path, [], detail)).where.append(subject)
    return total, list(found.values())


# -- redirect rules -----------------------------------------------------------------------


def _dest_key(keys: Iterable[str]) -> str | None:
    by_norm = {_NOT_ALNUM.sub("", k.lower()): k for k in keys}
    return next((by_norm[k] for k in _DEST_KEYS if k in by_norm), None)


def redirect_destinations(path: str) -> list[tuple[str, str]]:
    """(destination URL, where) from a JSON list or a CSV export of redirect rules."""
    data = _read(path)
    text = data.decode("utf-8-sig", "replace")
    if not text.strip():
        raise InputError(f"{path}: the file is empty (expected redirect rules)")
    if text.lstrip()[:1] in ("[", "{"):
        return _json_destinations(data, path)
    found = _csv_destinations(text)
    if not found:
        # Prose, a binary file or the wrong export must not pass as "0 rules, all covered".
        raise InputError(
            f"{path}: no redirect rules found: expected a JSON list of rules or a CSV export "
            "with a column of new URLs (or absolute URLs on each line)"
        )
    return found


def _json_destinations(data: bytes, path: str) -> list[tuple[str, str]]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(doc, dict):
        doc = doc.get("rules", doc.get("redirects"))
    if not isinstance(doc, list):
        raise InputError(f'{path}: expected a JSON list of rules (or {{"rules": [...]}})')
    out: list[tuple[str, str]] = []
    for i, rule in enumerate(doc):
        if isinstance(rule, str):
            out.append((rule, f"[{i}]"))
        elif isinstance(rule, dict) and (key := _dest_key(rule)) is not None:
            if isinstance(rule[key], str):
                out.append((rule[key], f"[{i}]"))
        else:
            raise InputError(f'{path}: [{i}]: a rule needs a new URL (e.g. "new_url")')
    return out


def _csv_destinations(text: str) -> list[tuple[str, str]]:
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    if not rows:
        return []
    column = None
    start = 0
    header = _dest_key(rows[0])
    if header is not None:
        column, start = rows[0].index(header), 1
    out: list[tuple[str, str]] = []
    for n, row in enumerate(rows[start:], start=start + 1):
        if column is not None:
            if column < len(row) and row[column].strip():
                out.append((row[column], f"line {n}"))
        else:
            # No header naming the column: the last absolute URL on the row is the
            # destination ("original URL, new URL" is the usual order).
            urls = [c for c in row if "://" in c]
            if urls:
                out.append((urls[-1], f"line {n}"))
    return out


def _url_host(url: str) -> tuple[str, int] | str | None:
    """(host, port) of an absolute URL; "" for a relative one (same host); None if bad."""
    url = url.strip()
    if url.startswith("/") and not url.startswith("//"):
        return ""
    if "://" not in url and not url.startswith("//"):
        url = "//" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    name = _normalise_name(host)
    if name is None or name.startswith("*."):
        return None
    default = 80 if parts.scheme.lower() in ("http", "ws") else 443
    return name, port or default


def check_redirects(loaded: LoadedConfig, path: str) -> tuple[int, list[Uncovered]]:
    cov = Coverage(loaded)
    rules = redirect_destinations(path)
    found: dict[str, Uncovered] = {}
    for url, where in rules:
        got = _url_host(url)
        if got == "":
            continue
        if got is None or isinstance(got, str):
            found.setdefault(url, Uncovered(url, path, [], "not a valid URL")).where.append(where)
            continue
        host, port = got
        ok, detail = cov.covers(host, port)
        if not ok:
            shown = host if port in (80, 443) else f"{host}:{port}"
            found.setdefault(shown, Uncovered(shown, path, [], detail)).where.append(
                f"{where}: {url.strip()}"
            )
    return len(rules), list(found.values())
