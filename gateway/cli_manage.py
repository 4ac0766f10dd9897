"""The management commands of ``gateway`` (contract §3): ``endpoints``, ``enforcement``,
``token`` and ``check``. They work on the file, with or without a running gateway (which
picks a change up through its file watch), through ``store.ConfigStore``: the same lock,
validation, atomic write and audit log as the admin API.

Heavy modules are imported inside the commands, so ``gateway run`` does not pay for them.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

import orjson

from gateway.jsondoc import dumps_pretty

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def print_json(data: object) -> None:
    """A command's --json output (the CLI's commands share it)."""
    sys.stdout.write(dumps_pretty(data).decode() + "\n")


def _err(message: str) -> None:
    print(f"gateway: {message}", file=sys.stderr)


def cli_actor_name() -> str:
    # Under sudo the audit log should name the person, not root.
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid{os.getuid()}"
    return f"cli:{user}"


# -- endpoints / enforcement --------------------------------------------------------------


def cmd_endpoints_list(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_file

    try:
        loaded = load_file(args.config)
    except ConfigError as exc:
        _err(f"config {args.config} is invalid: {'; '.join(exc.errors)}")
        return EXIT_REFUSED
    env = next((e for e in loaded.config.environments if e.name == args.environment), None)
    if env is None:
        _err(f"unknown environment {args.environment!r}")
        return EXIT_REFUSED
    live = list(loaded.entries[env.name].texts)
    cand = loaded.candidates[env.name]
    if args.json:
        print_json(
            {
                "environment": env.name,
                "hostname": loaded.hostnames[env.name].text,
                "secure_endpoints": live,
                "candidate_endpoints": list(cand.texts) if cand is not None else None,
                "enforcement": env.enforcement,
                "locked": env.locked,
                "config_sha256": loaded.sha256,
            }
        )
    else:
        for host in live:
            print(host)
    return EXIT_OK


def _edit(args: argparse.Namespace, action: str, mutation: Any) -> int:
    from gateway.store import Actor, ConfigStore, StoreError

    store = ConfigStore(args.config, audit_log=args.audit_log)
    try:
        result = store.edit(
            args.environment, action, mutation, Actor(cli_actor_name(), "cli"), args.if_match
        )
    except StoreError as exc:
        if args.json:
            print_json({"error": exc.message, "reason": exc.reason, "errors": exc.errors})
        else:
            _err(f"refused: {exc.message}")
            for line in exc.errors[1:] if len(exc.errors) > 1 else ():
                print(f"  {line}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print_json(
            {
                "changed": result.changed,
                "environment": result.environment,
                "action": action,
                "values": result.values,
                **result.detail,
                "sha256_before": result.sha256_before,
                "config_sha256": result.sha256_after,
                "audit_error": result.audit_error,
            }
        )
    else:
        print(_describe(result, action))
    if result.audit_error:
        _err(result.audit_error)
    return EXIT_OK


def _describe(result: Any, action: str) -> str:
    env = result.environment
    if not result.changed:
        return f"{env}: already so; nothing changed"
    done = {
        "add": "added",
        "remove": "removed",
        "replace": "list replaced with",
        "promote": "candidate list promoted:",
        "enforcement": "enforcement set to",
    }[action]
    values = ", ".join(result.values) if result.values else "(empty: only the hostname)"
    return (
        f"{env}: {done} {values} (config {result.sha256_before[:12]} -> {result.sha256_after[:12]})"
    )


def cmd_endpoints_edit(args: argparse.Namespace) -> int:
    from gateway import edits

    action = args.endpoints_command
    if action in ("add", "remove") and not args.hosts:
        _err(f"endpoints {action}: name at least one HOST")
        return EXIT_USAGE
    mutation = {
        "add": edits.add,
        "remove": edits.remove,
        "replace": edits.replace,
    }[action](args.hosts)
    return _edit(args, action, mutation)


def cmd_endpoints_promote(args: argparse.Namespace) -> int:
    from gateway import edits

    return _edit(args, "promote", edits.promote())


def cmd_enforcement(args: argparse.Namespace) -> int:
    from gateway import edits

    return _edit(args, "enforcement", edits.set_enforcement(args.mode))


# -- token --------------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.tokens import check_name, entry_for, new_token

    bad_name = check_name(args.name)
    if bad_name is not None:
        # Checked as the tokens file checks it: an entry printed here must load there.
        print(f"gateway: --name {args.name!r}: {bad_name}", file=sys.stderr)
        return EXIT_USAGE
    token = new_token()
    entry = entry_for(args.name, args.role, token)
    if args.json:
        print_json({"token": token, "entry": entry})
        return EXIT_OK
    print(f"token (shown only now; give it to {args.name}):")
    print(f"  {token}")
    print("entry for the --admin-tokens file (a JSON list):")
    print(f"  {orjson.dumps(entry).decode()}")
    return EXIT_OK


# -- check --------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_file
    from gateway.lint import lint, summary
    from gateway.precheck import InputError, check_certificates, check_redirects

    try:
        loaded = load_file(args.config)
    except ConfigError as exc:
        unparsable = any(
            e.startswith(("cannot read", "not valid JSON", "file is")) for e in exc.errors
        )
        if args.json:
            print_json({"ok": False, "errors": exc.errors, "warnings": [], "info": []})
        else:
            print(f"{args.config}: invalid", file=sys.stderr)
            for e in exc.errors:
                print(f"  error: {e}", file=sys.stderr)
        return EXIT_USAGE if unparsable else EXIT_REFUSED
    findings = lint(loaded)
    try:
        certs = check_certificates(loaded, args.cert) if args.cert else None
        redirects = check_redirects(loaded, args.redirects) if args.redirects else None
    except InputError as exc:
        if args.json:
            print_json({"ok": False, "errors": [str(exc)]})
        else:
            _err(str(exc))
        return EXIT_USAGE
    uncovered = (certs[1] if certs else []) + (redirects[1] if redirects else [])
    warnings = [f for f in findings if f.level == "warning"]
    failed = bool(uncovered) or (args.strict and bool(warnings))
    if args.json:
        print_json(
            {
                "ok": not failed,
                "sha256": loaded.sha256,
                "errors": [],
                **summary(findings),
                "certificates": {"names": certs[0], "uncovered": [u.as_dict() for u in certs[1]]}
                if certs
                else None,
                "redirects": {
                    "rules": redirects[0],
                    "uncovered": [u.as_dict() for u in redirects[1]],
                }
                if redirects
                else None,
            }
        )
    else:
        _print_check(args, loaded, findings, certs, redirects)
    return EXIT_REFUSED if failed else EXIT_OK


def _print_check(
    args: argparse.Namespace, loaded: Any, findings: list[Any], certs: Any, redirects: Any
) -> None:
    for f in findings:
        print(f"  {f.level}: {f}")
    n_warn = sum(f.level == "warning" for f in findings)
    envs = len(loaded.config.environments)
    print(
        f"{args.config}: valid ({envs} environments, sha256 {loaded.short_sha}), "
        f"{n_warn} warning{'s' if n_warn != 1 else ''}"
    )
    for label, got, unit in (
        ("certificates", certs, "SAN names"),
        ("redirects", redirects, "rules"),
    ):
        if got is None:
            continue
        total, missing = got
        print(f"{label}: {total} {unit}, {len(missing)} not covered by any environment")
        for u in missing:
            detail = f" ({u.detail})" if u.detail else ""
            print(f"  uncovered: {u.host}{detail} - {u.source}: {'; '.join(u.where[:3])}")


# -- parsers ------------------------------------------------------------------------------


def _edit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument(
        "--audit-log", help="JSON-lines change log (default: <config>.audit.jsonl beside it)"
    )
    p.add_argument("--if-match", help="refuse unless the file's sha256 is still this one")
    p.add_argument("--json", action="store_true")


def add_parsers(sub: Any) -> None:
    """Register the management subcommands on ``gateway``'s subparsers."""
    ep = sub.add_parser("endpoints", help="list or change an environment's secure endpoints")
    esub = ep.add_subparsers(dest="endpoints_command", required=True)
    ls = esub.add_parser("list", help="the environment's list, one per line")
    ls.add_argument("--config", required=True)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("environment")
    ls.set_defaults(func=cmd_endpoints_list)
    for name, what in (
        ("add", "add hosts (already present: nothing to do)"),
        ("remove", "remove hosts (absent: nothing to do)"),
        ("replace", "replace the whole list (no HOST: only the hostname stays allowed)"),
    ):
        p = esub.add_parser(name, help=what)
        _edit_options(p)
        p.add_argument("environment")
        p.add_argument("hosts", nargs="*", metavar="HOST")
        p.set_defaults(func=cmd_endpoints_edit)
    pr = esub.add_parser("promote", help="the candidate list becomes the live list")
    _edit_options(pr)
    pr.add_argument("environment")
    pr.set_defaults(func=cmd_endpoints_promote)

    enf = sub.add_parser("enforcement", help="switch an environment's enforcement mode")
    _edit_options(enf)
    enf.add_argument("environment")
    enf.add_argument("mode", choices=("enforce", "report", "off"))
    enf.set_defaults(func=cmd_enforcement)

    tok = sub.add_parser("token", help="make an admin API token")
    tok.add_argument("--name", required=True)
    tok.add_argument("--role", required=True, choices=("admin", "viewer"))
    tok.add_argument("--json", action="store_true")
    tok.set_defaults(func=cmd_token)
