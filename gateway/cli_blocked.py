"""``gateway blocked-hosts``: the top refused Host values from a running gateway."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from gateway.cli_manage import print_json


def _when(ts: object) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(str(ts)), datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
    except (TypeError, ValueError):
        return "?"


_ROW_KEYS = frozenset({"host", "count", "reason", "last_seen"})


def _looks_like_blocked_hosts(doc: object) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("environments"), dict):
        return False
    return all(
        isinstance(rows, list)
        and all(isinstance(row, dict) and row.keys() >= _ROW_KEYS for row in rows)
        for rows in doc["environments"].values()
    )


def cmd_blocked_hosts(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.environment is not None:
        query["environment"] = args.environment
    url = args.admin.rstrip("/") + "/api/v1/blocked-hosts?" + urllib.parse.urlencode(query)
    token = args.token or os.environ.get("GATEWAY_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            doc: dict[str, Any] = orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        print(f"gateway: {url}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"gateway: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if not _looks_like_blocked_hosts(doc):
        # Another server at that address (an upstream, a proxy's error page in JSON) must
        # not read as "nothing refused".
        print(
            f"gateway: {url} did not answer as a gateway's admin API "
            "(no table of refused hosts in the answer)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print_json(doc)
        return 0
    tables = doc["environments"]
    if not any(tables.values()):
        print("no refused hosts recorded")
    for env, rows in sorted(tables.items()):
        if not rows:
            continue
        print(f"environment {env or '(none)'}:")
        print(f"  {'count':>9}  {'reason':<15} {'last seen (UTC)':<19}  host")
        for row in rows:
            # ascii(): a hostile value cannot move the cursor or fake a line in a terminal.
            host = ascii(row["host"])[1:-1] + (" [truncated]" if row.get("truncated") else "")
            print(f"  {row['count']:>9}  {row['reason']:<15} {_when(row['last_seen']):<19}  {host}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("blocked-hosts", help="top refused Host values from a running gateway")
    p.add_argument("--admin", required=True, help="admin URL, e.g. http://127.0.0.1:9180")
    p.add_argument("--token", help="viewer token (or GATEWAY_TOKEN in the environment)")
    p.add_argument("--environment")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_blocked_hosts)
