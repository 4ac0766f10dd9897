"""Pull every PromQL expression out of the Grafana dashboard and the alert rules.

Used by tests/test_alert_rules.py (static checks against the metrics contract) and meant
for an end-to-end test that runs a real Prometheus against a running gateway and sends
each expression, made concrete with :func:`concrete`, to ``/api/v1/query``.

The PromQL handling here is a tokenizer, not a parser: it is exact for the expressions
this project writes (string literals, label matchers, grouping clauses, ranges) and makes
no claim beyond that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = REPO / "deploy" / "grafana" / "secure-endpoints-gateway.json"
ALERTS_PATH = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST_PATH = REPO / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG_PATH = REPO / "deploy" / "prometheus" / "prometheus.yml"

# Copied from the contract, section 5 (metric name -> its labels). These names and labels
# are what dashboards and alerts may rely on; a query using anything else is a bug.
CONTRACT_LABELS: dict[str, frozenset[str]] = {
    "gateway_requests_allowed_total": frozenset({"listener", "environment", "match"}),
    "gateway_requests_blocked_total": frozenset({"listener", "environment", "reason"}),
    "gateway_connections_refused_total": frozenset({"listener", "reason"}),
    "gateway_connections_open": frozenset({"listener"}),
    "gateway_requests_in_flight": frozenset({"listener"}),
    "gateway_candidate_disagreements_total": frozenset({"environment", "direction"}),
    "gateway_config_reloads_total": frozenset({"result"}),
    "gateway_config_last_reload_successful": frozenset(),
    "gateway_config_last_reload_success_timestamp_seconds": frozenset(),
    "gateway_config_info": frozenset({"sha256"}),
    "gateway_allowlist_entries": frozenset({"environment"}),
    "gateway_build_info": frozenset({"version", "engine", "python"}),
    "gateway_upstream_responses_total": frozenset({"environment", "code_class"}),
    "gateway_upstream_errors_total": frozenset({"environment", "kind"}),
    "gateway_upstream_latency_seconds": frozenset({"environment"}),
}
CONTRACT_METRICS: frozenset[str] = frozenset(CONTRACT_LABELS)
CONTRACT_HISTOGRAMS: frozenset[str] = frozenset({"gateway_upstream_latency_seconds"})
CONTRACT_COUNTERS: frozenset[str] = frozenset(m for m in CONTRACT_METRICS if m.endswith("_total"))
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS: frozenset[str] = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Values used by concrete() for Grafana's built-in interval variables.
DEFAULT_BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression and where it came from."""

    source: str  # "panel", "annotation", "variable" or "alert"
    title: str  # panel title, annotation name, variable name or alert name
    ref_id: str  # the target's refId ("" for alerts and variables)
    expr: str
    instant: bool = False  # a Grafana instant query (table, bar gauge)


# ---------------------------------------------------------------------------------------
# Extraction


def _load_dashboard(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data: Any = json.load(f)
    # A dashboard wrapped for the HTTP API ({"dashboard": {...}}) nests the model.
    if isinstance(data, dict) and "dashboard" in data and "panels" not in data:
        data = data["dashboard"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a dashboard is a JSON object")
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) if panel.get("type") == "row" else ()


def dashboard_queries(path: str | Path = DASHBOARD_PATH) -> list[Query]:
    """Panel targets and annotation queries of the dashboard, in dashboard order."""
    dashboard = _load_dashboard(path)
    out: list[Query] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr and not target.get("hide"):
                out.append(
                    Query(
                        source="panel",
                        title=panel.get("title", ""),
                        ref_id=target.get("refId", ""),
                        expr=expr,
                        instant=bool(target.get("instant")) and not target.get("range"),
                    )
                )
    for ann in dashboard.get("annotations", {}).get("list", []):
        expr = ann.get("expr") or (ann.get("target") or {}).get("expr")
        if expr and ann.get("enable", True):
            out.append(Query(source="annotation", title=ann.get("name", ""), ref_id="", expr=expr))
    return out


def dashboard_exprs(path: str | Path = DASHBOARD_PATH) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets, then annotations."""
    return [q.expr for q in dashboard_queries(path)]


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<sel>.*?)\s*,\s*(?P<label>\w+)\s*\)\s*$", re.S)


def variable_queries(path: str | Path = DASHBOARD_PATH) -> list[Query]:
    """The series selector of each ``label_values(SELECTOR, label)`` template variable.

    The selector is plain PromQL (an instant vector selector), so it can be sent to
    /api/v1/query or /api/v1/series like any other expression.
    """
    dashboard = _load_dashboard(path)
    out: list[Query] = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        text = text or var.get("definition", "")
        m = _LABEL_VALUES.match(text)
        if not m:
            raise ValueError(f"variable {var.get('name')!r}: not a label_values() query: {text!r}")
        out.append(Query(source="variable", title=var.get("name", ""), ref_id="", expr=m["sel"]))
    return out


def alert_rules(path: str | Path = ALERTS_PATH) -> list[dict[str, Any]]:
    """The rules (alerting and recording) of a Prometheus rules file, in file order."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return [rule for group in data.get("groups", []) for rule in group.get("rules", [])]


def alert_queries(path: str | Path = ALERTS_PATH) -> list[Query]:
    return [
        Query(
            source="alert", title=r.get("alert") or r.get("record", ""), ref_id="", expr=r["expr"]
        )
        for r in alert_rules(path)
    ]


def alert_exprs(path: str | Path = ALERTS_PATH) -> list[str]:
    """The ``expr`` of every rule in a Prometheus rules file."""
    return [q.expr for q in alert_queries(path)]


def all_queries(
    dashboard: str | Path = DASHBOARD_PATH, alerts: str | Path = ALERTS_PATH
) -> list[Query]:
    """Dashboard panels and annotations, template-variable selectors and alert rules."""
    return dashboard_queries(dashboard) + variable_queries(dashboard) + alert_queries(alerts)


# ---------------------------------------------------------------------------------------
# Tokenizing

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_IDENT = re.compile(r"(?<![\w:$.])[A-Za-z_:][\w:]*")
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([A-Za-z_:][\w:]*)"')
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_BRACES = re.compile(r"\{[^{}]*\}")
_SELECTOR = re.compile(r"(?<![\w:$.])(gateway_[\w:]*)\s*(\{[^{}]*\})?")


def strip_strings(expr: str) -> str:
    """The expression with comments removed and string literals replaced by ``""``."""
    out: list[str] = []
    pos = 0
    for m in _STRING.finditer(expr):
        out.append(_COMMENT.sub("", expr[pos : m.start()]))
        out.append('""')
        pos = m.end()
    out.append(_COMMENT.sub("", expr[pos:]))
    return "".join(out)


def string_literals(expr: str) -> list[str]:
    """The contents of the expression's string literals (quotes removed, unescaped)."""
    out = []
    for m in _STRING.finditer(expr):
        raw = m.group(0)[1:-1]
        out.append(raw if m.group(0)[0] == "`" else re.sub(r"\\(.)", r"\1", raw))
    return out


def series_names(expr: str) -> set[str]:
    """Raw series names used by the expression, e.g. ``gateway_..._seconds_bucket``."""
    bare = strip_strings(expr)
    # Identifiers inside {...} are label names, never metric names.
    names = {t for t in _IDENT.findall(_BRACES.sub("{}", bare)) if t.startswith("gateway_")}
    names.update(n for n in _NAME_MATCHER.findall(expr) if n.startswith("gateway_"))
    return names


def base_metric(series: str) -> str:
    """The contract metric of a series name: histogram suffixes map to the histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in CONTRACT_HISTOGRAMS:
            return series[: -len(suffix)]
    return series


def metric_names(expr: str) -> set[str]:
    """Contract metric names the expression uses.

    ``gateway_upstream_latency_seconds_bucket`` maps to ``gateway_upstream_latency_seconds``;
    a ``_bucket``/``_sum``/``_count`` suffix on anything that is not a contract histogram is
    kept as written (so it shows up as an unknown metric). Use :func:`series_names` for the
    names as written.
    """
    return {base_metric(s) for s in series_names(expr)}


def selectors(expr: str) -> list[str]:
    """Each ``gateway_*`` vector selector with its matchers, e.g. ``m{a=~"$x"}``.

    Handy to check, one by one, that every series an (often empty) alert expression reads
    exists.
    """
    blank = strip_strings_keep_length(expr)
    return [
        re.sub(r"\s+", " ", expr[m.start() : m.end()]).strip() for m in _SELECTOR.finditer(blank)
    ]


def label_names(expr: str) -> set[str]:
    """Label names the expression matches on or groups by.

    Covers ``{label op "value"}`` matchers, ``by/without/on/ignoring/group_left/
    group_right (...)`` lists, and the label arguments of ``label_replace``/``label_join``.
    """
    bare = strip_strings(expr)
    labels: set[str] = set()
    for braces in _BRACES.findall(bare):
        labels.update(name for name, _op in _MATCHER.findall(braces))
    for group in _GROUPING.findall(bare):
        labels.update(t.strip() for t in group.split(",") if t.strip())
    labels.update(_label_function_args(expr))
    labels.discard("__name__")
    return labels


def _function_args(expr: str, name: str) -> Iterator[list[str]]:
    """The top-level arguments (original text) of each call of function ``name``."""
    blank = strip_strings_keep_length(expr)
    for m in re.finditer(rf"\b{name}\s*\(", blank):
        depth, start, args = 1, m.end(), []
        for i in range(m.end(), len(blank)):
            c = blank[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            if (c == "," and depth == 1) or depth == 0:
                args.append(expr[start:i])
                start = i + 1
            if depth == 0:
                break
        yield args


def _string_arg(arg: str) -> str:
    literals = string_literals(arg)
    return literals[0] if literals else ""


def _label_function_args(expr: str) -> set[str]:
    """Label names given as strings to label_replace(v, dst, repl, src, regex) and
    label_join(v, dst, sep, src, ...)."""
    out: set[str] = set()
    for args in _function_args(expr, "label_replace"):
        if len(args) == 5:
            out.update({_string_arg(args[1]), _string_arg(args[3])})
    for args in _function_args(expr, "label_join"):
        out.add(_string_arg(args[1]) if len(args) > 1 else "")
        out.update(_string_arg(a) for a in args[3:])
    out.discard("")
    return out


def created_labels(expr: str) -> set[str]:
    """Destination labels created by label_replace/label_join in the expression."""
    out = {_string_arg(args[1]) for args in _function_args(expr, "label_replace") if len(args) > 1}
    out |= {_string_arg(args[1]) for args in _function_args(expr, "label_join") if len(args) > 1}
    out.discard("")
    return out


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(contract metric, label names matched in its braces) for each selector."""
    out = []
    for m in _SELECTOR.finditer(strip_strings_keep_length(expr)):
        braces = m.group(2) or ""
        out.append((base_metric(m.group(1)), {n for n, _ in _MATCHER.findall(braces)}))
    return out


def strip_strings_keep_length(expr: str) -> str:
    """Like strip_strings, but string contents become spaces (positions are kept)."""
    return _STRING.sub(lambda m: '"' + " " * (len(m.group(0)) - 2) + '"', expr)


# ---------------------------------------------------------------------------------------
# Grafana variables

_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]|\$(?P<plain>[A-Za-z_]\w*)"
)
# label="$var" (Grafana renders a multi-value variable as a regex): make it label=~"...".
_EQ_VARIABLE = re.compile(
    r"(?P<label>[A-Za-z_]\w*)\s*(?P<op>!?=)(?!~)\s*\"(?P<value>[^\"]*?"
    r"(?:\$\{\w+(?::[^}]*)?\}|\[\[\w+\]\]|\$[A-Za-z_]\w*)[^\"]*)\""
)


def grafana_variables(expr: str) -> set[str]:
    """Names of the Grafana variables an expression uses (built-ins included)."""
    return {
        m.group("braced") or m.group("old") or m.group("plain") for m in _VARIABLE.finditer(expr)
    }


def concrete(
    expr: str,
    variables: Mapping[str, str] | None = None,
    *,
    rate_interval: str | None = None,
) -> str:
    """Substitute Grafana variables so the expression can go to /api/v1/query.

    ``$__rate_interval`` becomes ``1m`` (or ``rate_interval``), ``$__interval`` ``1m``,
    ``$__range`` ``1h``; every other variable (``$environment``, ``${listener}``,
    ``[[instance]]``...) becomes ``variables[name]`` or ``.*`` — "All". A matcher written
    ``label="$var"`` is turned into ``label=~"..."`` so the regex value works;
    ``${datasource}`` never appears in an expression and needs nothing. A ``$1`` inside a
    label_replace replacement is left alone (variables start with a letter or ``_``).
    """
    values = dict(DEFAULT_BUILTINS)
    if rate_interval is not None:
        values["__rate_interval"] = rate_interval
    if variables:
        values.update(variables)

    def op_fix(m: re.Match[str]) -> str:
        op = "=~" if m.group("op") == "=" else "!~"
        return f'{m.group("label")}{op}"{m.group("value")}"'

    def sub(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("old") or m.group("plain")
        return values.get(name, ".*")

    return _VARIABLE.sub(sub, _EQ_VARIABLE.sub(op_fix, expr))


__all__ = [
    "ALERTS_PATH",
    "ALERTS_TEST_PATH",
    "CONTRACT_COUNTERS",
    "CONTRACT_HISTOGRAMS",
    "CONTRACT_LABELS",
    "CONTRACT_METRICS",
    "DASHBOARD_PATH",
    "PROMETHEUS_CONFIG_PATH",
    "TARGET_LABELS",
    "Query",
    "alert_exprs",
    "alert_queries",
    "alert_rules",
    "all_queries",
    "base_metric",
    "concrete",
    "created_labels",
    "dashboard_exprs",
    "dashboard_queries",
    "grafana_variables",
    "iter_panels",
    "label_names",
    "metric_names",
    "selector_labels",
    "selectors",
    "series_names",
    "string_literals",
    "strip_strings",
    "variable_queries",
]
