"""The ``gateway`` command (contract §3). Exit codes are part of the contract."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.cli_manage import print_json
from gateway.config import (
    ConfigError,
    LoadedConfig,
    listeners_of,
    load_file,
    parse_bind,
    schema,
)

if TYPE_CHECKING:
    from gateway.app import RunOptions

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
ENGINES = ("aiohttp", "fast")
# fast since the whole live suite passes over both engines (issue 8); aiohttp stays as
# the reference engine (tests/test_differential.py).
DEFAULT_ENGINE = "fast"


def _check_run_options(args: argparse.Namespace) -> str | None:
    """What makes ``run``'s own options unusable, found before anything starts (exit 2):
    with --workers, a worker that cannot open its access log would die and be replaced
    for ever."""
    try:
        parse_bind(args.listen)
    except ValueError as exc:
        return f"--listen: {exc}"
    if args.access_log:
        try:
            with open(args.access_log, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            return f"--access-log {args.access_log}: {exc.strerror or exc}"
    return None


def _load_or_exit(path: str) -> LoadedConfig:
    try:
        return load_file(path)
    except ConfigError as exc:
        print(f"gateway: config {path} is invalid:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _run_options(args: argparse.Namespace) -> RunOptions:
    from gateway.app import RunOptions

    return RunOptions(
        config_path=args.config,
        listen=args.listen,
        admin_listen=getattr(args, "admin_listen", "127.0.0.1:9180"),
        engine=args.engine,
        drain_delay=getattr(args, "drain_delay", 0.0),
        drain_timeout=args.drain_timeout,
        admin_tokens=getattr(args, "admin_tokens", None),
        watch=not args.no_watch,
        access_log=args.access_log,
        log_format=args.log_format,
    )


def _workers(value: str) -> int:
    if value == "auto":
        return max(1, os.cpu_count() or 1)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers must be a positive number or auto, not {value!r}")
    return int(value)


def _setup_logging(fmt: str) -> None:
    from gateway.logs import setup_logging

    setup_logging(fmt)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import StartupError, serve, serve_supervisor

    _setup_logging(args.log_format)
    try:
        workers = _workers(args.workers)
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.engine not in ENGINES:
        print(
            f"gateway: unknown engine {args.engine!r} (available: {', '.join(ENGINES)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    problem = _check_run_options(args)
    if problem is not None:
        print(f"gateway: {problem}", file=sys.stderr)
        return EXIT_USAGE
    loaded = _load_or_exit(args.config)
    opts = _run_options(args)
    import uvloop

    try:
        if workers == 1:
            return int(uvloop.run(serve(opts, loaded)))
        return int(uvloop.run(serve_supervisor(opts, loaded, workers)))
    except StartupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_worker(args: argparse.Namespace) -> int:
    from gateway.app import serve_worker

    _setup_logging(args.log_format)
    loaded = _load_or_exit(args.config)
    fds = {}
    for part in args.fds.split(","):
        name, _, fd = part.partition("=")
        fds[name] = int(fd)
    import uvloop

    return int(uvloop.run(serve_worker(_run_options(args), loaded, fds, args.control)))


def cmd_check(args: argparse.Namespace) -> int:
    # Lint and the pre-enablement checks live with the other management commands.
    from gateway.cli_manage import cmd_check as check

    return check(args)


def cmd_explain(args: argparse.Namespace) -> int:
    loaded = _load_or_exit(args.config)
    from gateway.counters import Counters
    from gateway.policy import compile_config

    snap = compile_config(loaded, Counters())
    names = [lst.name for lst in listeners_of(loaded.config)]
    listener = args.listener or names[0]
    if listener not in snap.listeners:
        print(f"gateway: unknown listener {listener!r} (have: {', '.join(names)})", file=sys.stderr)
        return EXIT_USAGE
    result = snap.listeners[listener].explain(args.host)
    data = result.as_dict()
    if args.json:
        print_json(data)
    else:
        d = result.decision
        if d.action == "forward":
            verdict = "would-block (report mode: forwarded)" if d.would_block else "forwarded"
            print(f"{verdict}: environment {d.environment} match {d.label} rule {result.rule!r}")
        else:
            status = "close connection" if d.status == 0 else str(d.status)
            env = f" environment {d.environment}" if d.environment else ""
            print(f"refused {status}: {d.label}{env}")
        print(f"  normalised: {result.normalised}")
        if result.error:
            print(f"  why: {result.error}")
        if result.candidate_action is not None:
            print(
                f"  candidate list: {result.candidate_action}"
                + (f" ({d.disagreement})" if d.disagreement else " (same)")
            )
    return EXIT_OK if result.decision.action == "forward" else EXIT_REFUSED


def cmd_schema(args: argparse.Namespace) -> int:
    print_json(schema())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Secure-endpoints gateway.")
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve")
    run.add_argument("--config", required=True)
    run.add_argument("--listen", default="0.0.0.0:8080")
    run.add_argument("--admin-listen", default="127.0.0.1:9180")
    run.add_argument("--workers", default="1")
    run.add_argument("--admin-tokens")
    run.add_argument("--engine", default=DEFAULT_ENGINE)
    run.add_argument("--drain-delay", type=float, default=5.0)
    run.add_argument("--drain-timeout", type=float, default=20.0)
    run.add_argument("--access-log", help="write JSON-lines access log to this file")
    run.add_argument(
        "--log-format",
        choices=("auto", "json", "text"),
        default="auto",
        help="auto: text on a terminal, JSON lines otherwise",
    )
    run.add_argument(
        "--no-watch",
        action="store_true",
        help="reload only on SIGHUP or POST /api/v1/reload, not on file changes",
    )
    run.set_defaults(func=cmd_run)

    # Internal: a worker process started by `gateway run --workers N`.
    worker = sub.add_parser("worker")
    worker.add_argument("--config", required=True)
    worker.add_argument("--listen", default="0.0.0.0:8080")
    worker.add_argument("--engine", default=DEFAULT_ENGINE)
    worker.add_argument("--drain-timeout", type=float, default=20.0)
    worker.add_argument("--no-watch", action="store_true")
    worker.add_argument("--access-log")
    worker.add_argument("--log-format", default="json")
    worker.add_argument("--fds", required=True)
    worker.add_argument("--control", required=True)
    worker.add_argument("--worker-index", type=int, default=0)
    worker.set_defaults(func=cmd_worker)

    check = sub.add_parser("check", help="validate and lint a config")
    check.add_argument("--config", required=True)
    check.add_argument("--cert", action="append", default=[])
    check.add_argument("--redirects")
    check.add_argument("--strict", action="store_true")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="how a Host value would be decided")
    explain.add_argument("--config", required=True)
    explain.add_argument("--listener")
    explain.add_argument("--json", action="store_true")
    explain.add_argument("host")
    explain.set_defaults(func=cmd_explain)

    sch = sub.add_parser("schema", help="print the config's JSON Schema")
    sch.set_defaults(func=cmd_schema)

    from gateway.cli_manage import add_parsers

    add_parsers(sub)  # endpoints, enforcement, token
    from gateway.cli_blocked import add_parser as add_blocked

    add_blocked(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
