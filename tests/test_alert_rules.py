"""Static checks of deploy/prometheus (rules, rule unit tests, scrape config) and of the
Grafana dashboard in deploy/grafana: promtool accepts them, and every query uses only the
metrics and labels of the contract (section 5), never a raw Host value.

promtool comes from the Debian package `prometheus` (`make apt-test` installs it); when it
is missing these tests fail rather than skip, so CI cannot pass without running them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    from tests import dashboard_queries as dq
except ImportError:  # run as `pytest` without the repository root on sys.path
    import dashboard_queries as dq  # type: ignore[no-redef,import-not-found,unused-ignore]

REQUIRED_ALERTS = {
    "GatewayConfigReloadFailing",
    "GatewayBlockedRateJumpAfterReload",
    "GatewayWouldBlockInReportMode",
    "GatewayUpstreamErrors",
}
# Alerts about refused or would-be-refused Host values must tell the operator how to list
# them.
BLOCKED_HOSTS_ALERTS = {"GatewayBlockedRateJumpAfterReload", "GatewayWouldBlockInReportMode"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
RATE_FUNCTIONS = ("rate(", "increase(", "irate(")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install the Debian package 'prometheus' "
            "(`make apt-test`, or scripts/ensure-apt.sh promtool:prometheus)",
            pytrace=False,
        )
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


# -------------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    proc = _run("check", "rules", dq.ALERTS_PATH)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"SUCCESS: (\d+) rules found", out)
    assert m, out
    assert int(m.group(1)) == len(dq.alert_rules()), out


def test_promtool_unit_tests_pass() -> None:
    proc = _run("test", "rules", dq.ALERTS_TEST_PATH)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "SUCCESS" in out and "FAILED" not in out, out


def test_promtool_check_config() -> None:
    proc = _run("check", "config", dq.PROMETHEUS_CONFIG_PATH)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "is valid prometheus config file syntax" in out, out


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each dashboard query, made concrete, parses: promtool checks it as a recording rule."""
    queries = dq.dashboard_queries() + dq.variable_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": dq.concrete(q.expr)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    proc = _run("check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- alert rules


def test_required_alerts_present_with_annotations() -> None:
    rules = dq.alert_rules()
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{name}: no {key} annotation"
        if name in BLOCKED_HOSTS_ALERTS:
            assert "gateway blocked-hosts" in annotations["runbook"], name
            assert "/api/v1/blocked-hosts" in annotations["runbook"], name
    severities = {r["alert"]: r["labels"]["severity"] for r in rules}
    assert severities["GatewayWouldBlockInReportMode"] == "info"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    with open(dq.ALERTS_TEST_PATH, encoding="utf-8") as f:
        tests = yaml.safe_load(f)["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {r["alert"] for r in dq.alert_rules()}
    assert alerts - fires == set(), "alerts without a firing test case"
    assert alerts - quiet == set(), "alerts without a test case where they stay quiet"


# ------------------------------------------------------------------------------- dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    with open(dq.DASHBOARD_PATH, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_dashboard_model(dashboard: dict[str, Any]) -> None:
    assert dashboard.get("uid") and dashboard.get("title")
    assert dashboard.get("id") is None  # importable anywhere
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = list(dq.iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = _variables(dashboard)
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("environment", "listener"):
        var = variables[name]
        assert var["type"] == "query", name
        assert var["datasource"]["uid"] == "${datasource}", name
        assert var.get("includeAll") and var.get("allValue") == ".*", name
    assert {q.title for q in dq.variable_queries()} >= {"environment", "listener"}
    for name in ("environment", "listener"):
        query = variables[name]["definition"]
        assert re.search(rf",\s*{name}\s*\)$", query), query


def test_every_panel_has_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """Rows only group panels; every other panel queries ${datasource}."""
    for panel in dq.iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, title
        targets = panel.get("targets")
        assert targets, f"{title}: no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), title
        for t in targets:
            assert t.get("datasource", panel["datasource"])["uid"] == "${datasource}", title
            assert t.get("expr", "").strip(), f"{title}: empty query"
    for ann in dashboard["annotations"]["list"]:
        if ann.get("builtIn"):
            continue
        assert ann["datasource"]["uid"] == "${datasource}", ann["name"]


def _panels_using(dashboard: dict[str, Any], needle: str) -> list[dict[str, Any]]:
    return [
        p
        for p in dq.iter_panels(dashboard)
        if any(needle in t.get("expr", "") for t in p.get("targets", []))
    ]


def test_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    exprs = dq.dashboard_exprs()
    joined = "\n".join(exprs)
    # allowed vs blocked per environment
    assert any(
        "gateway_requests_allowed_total" in e and "by (environment)" in e for e in exprs
    ) and any("gateway_requests_blocked_total" in e and "by (environment)" in e for e in exprs)
    # blocked by reason, including a table or bar panel of the top reasons
    top = [
        p
        for p in _panels_using(dashboard, "gateway_requests_blocked_total")
        if p["type"] in {"table", "bargauge", "barchart"}
    ]
    assert top and any("reason" in t["expr"] for p in top for t in p["targets"])
    # would-block traffic in report mode
    assert 'match="report_only"' in joined
    # candidate disagreements, reloads and the live config version in a stat panel
    assert "gateway_candidate_disagreements_total" in joined
    assert "gateway_config_reloads_total" in joined
    stats = [p for p in dq.iter_panels(dashboard) if p["type"] == "stat"]
    assert any("gateway_config_info" in t["expr"] for p in stats for t in p["targets"])
    assert any(
        "gateway_config_last_reload_successful" in t["expr"] for p in stats for t in p["targets"]
    )
    # upstream latency quantiles and errors
    assert re.search(
        r"histogram_quantile\(\s*0\.\d+,.*gateway_upstream_latency_seconds_bucket", joined
    )
    assert "gateway_upstream_errors_total" in joined


# ------------------------------------------------------------------ queries vs the contract


def _all_queries() -> list[dq.Query]:
    return dq.all_queries()


@pytest.mark.parametrize("query", _all_queries(), ids=lambda q: f"{q.source}:{q.title}:{q.ref_id}")
def test_query_uses_contract_metrics_and_labels(query: dq.Query) -> None:
    expr = query.expr
    metrics = dq.metric_names(expr)
    assert metrics, f"no gateway_ metric in {expr!r}"
    assert metrics <= dq.CONTRACT_METRICS, f"not in the contract: {metrics - dq.CONTRACT_METRICS}"

    # Matchers name only labels the metric has (plus the scrape labels).
    for metric, labels in dq.selector_labels(expr):
        allowed = dq.CONTRACT_LABELS[metric] | dq.TARGET_LABELS
        if metric in dq.CONTRACT_HISTOGRAMS:
            allowed |= {"le"}
        assert labels <= allowed, f"{metric}: unknown labels {labels - allowed}"

    # Grouping and label_replace use labels that exist somewhere in the expression.
    known = set(dq.TARGET_LABELS) | dq.created_labels(expr)
    for metric in metrics:
        known |= dq.CONTRACT_LABELS[metric]
        if metric in dq.CONTRACT_HISTOGRAMS:
            known.add("le")
    assert dq.label_names(expr) <= known, f"unknown labels {dq.label_names(expr) - known}"


@pytest.mark.parametrize("query", _all_queries(), ids=lambda q: f"{q.source}:{q.title}:{q.ref_id}")
def test_query_never_uses_a_host_label(query: dq.Query) -> None:
    """Host values are unbounded: never a label, never grouped by (contract section 5)."""
    labels = {label.lower() for label in dq.label_names(query.expr)}
    assert not labels & {"host", "hostname", "authority", "server_name", "sni"}, query.expr
    assert '"host"' not in query.expr.lower()


def test_legends_never_show_a_host_label(dashboard: dict[str, Any]) -> None:
    for panel in dq.iter_panels(dashboard):
        for t in panel.get("targets", []):
            assert not re.search(r"\{\{\s*host\s*\}\}", t.get("legendFormat", "")), panel["title"]


@pytest.mark.parametrize("query", _all_queries(), ids=lambda q: f"{q.source}:{q.title}:{q.ref_id}")
def test_counters_are_rated(query: dq.Query) -> None:
    """Counters (and histogram buckets) are read through rate()/increase() over a range;
    in the dashboard the range is $__rate_interval (or $__range for totals over the
    selected time range)."""
    blank = dq.strip_strings_keep_length(query.expr)
    for m in dq._SELECTOR.finditer(blank):
        series = m.group(1)
        if not (series.endswith("_total") or series.endswith("_bucket")):
            continue
        before = blank[: m.start()].rstrip()
        assert before.endswith(RATE_FUNCTIONS), f"{series} not inside rate()/increase()"
        after = blank[m.end() :].lstrip()
        rng = re.match(r"\[([^\]]+)\]", after)
        assert rng, f"{series} without a range"
        if query.source != "alert":
            assert rng.group(1) in {"$__rate_interval", "$__range"}, rng.group(0)


def test_dashboard_variables_are_defined_and_regex_matched(dashboard: dict[str, Any]) -> None:
    defined = set(_variables(dashboard)) | GRAFANA_BUILTINS
    for query in dq.dashboard_queries() + dq.variable_queries():
        used = dq.grafana_variables(query.expr)
        assert used <= defined, f"undefined variables {used - defined} in {query.expr!r}"
        # Multi-value and "All" render as a regex: a variable needs =~ (or !~).
        for m in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', query.expr):
            if dq.grafana_variables(m.group(3)):
                assert m.group(2) in {"=~", "!~"}, f"{m.group(0)}: use =~ with a variable"


# ---------------------------------------------------------------------- the helper itself


def test_metric_names_and_series_names() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le) (rate("
        'gateway_upstream_latency_seconds_bucket{environment=~"$environment"}[$__rate_interval])))'
        ' / gateway_upstream_latency_seconds_count + on(job) gateway_config_info{sha256="x"}'
    )
    assert dq.series_names(expr) == {
        "gateway_upstream_latency_seconds_bucket",
        "gateway_upstream_latency_seconds_count",
        "gateway_config_info",
    }
    assert dq.metric_names(expr) == {"gateway_upstream_latency_seconds", "gateway_config_info"}
    # Only contract histograms lose a suffix; names inside strings are not metrics.
    assert dq.metric_names('gateway_foo_count + label_replace(x, "a", "gateway_b", "c", ".*")') == {
        "gateway_foo_count"
    }
    assert dq.label_names(
        'sum by (environment) (m{reason=~"a|b"})'
        ' and on (job) label_replace(v, "d", "$1", "s", "(.*)")'
    ) == {"environment", "reason", "job", "d", "s"}


def test_concrete_substitutes_grafana_variables() -> None:
    expr = (
        'sum by (environment) (rate(gateway_requests_blocked_total{environment=~"$environment",'
        ' listener="${listener}", instance!="[[instance]]"}[$__rate_interval]))'
        ' + count(label_replace(gateway_config_info, "s", "$1", "sha256", "(.{12}).*"))'
        " + sum(increase(gateway_config_reloads_total[$__range]))"
    )
    out = dq.concrete(expr)
    assert 'environment=~".*"' in out
    assert 'listener=~".*"' in out
    assert 'instance!~".*"' in out
    assert "[1m]" in out and "[1h]" in out
    assert '"$1"' in out  # label_replace's replacement is not a Grafana variable
    assert dq.grafana_variables(out) == set()
    custom = dq.concrete(expr, {"environment": "production"}, rate_interval="30s")
    assert 'environment=~"production"' in custom and "[30s]" in custom
