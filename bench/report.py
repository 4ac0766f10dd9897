"""Results of a run: machine description, medians and ratios, the console table, the
Markdown summary and the ratio chart. Everything here reads the results dict that
`bench.harness` writes as JSON, so a summary can be regenerated from a saved run."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.proc import REPO_ROOT

# The baselines every system is compared with, in the order the table shows them.
BASELINES = (("nginx", "vs nginx"), ("aiohttp-floor", "vs floor"), ("bare-protocol", "vs bare"))

Results = dict[str, Any]


def _run(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    # nginx -v and wrk -v print to stderr / exit non-zero; take whichever has text.
    text = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return text[0] if text else "unavailable"


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def loadavg() -> str:
    """1, 5 and 15 minute load: a busy machine explains noisy figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _git_version() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "no commit yet"


def machine() -> dict[str, Any]:
    """What a reader needs to judge the figures (and whether two runs compare)."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _dist_version("aiohttp"),
        "uvloop": _dist_version("uvloop"),
        "nginx": _run(["/usr/sbin/nginx", "-v"]),
        "wrk": _run(["wrk", "-v"]),
        "git": _git_version(),
        "loadavg_at_start": loadavg(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def medians(samples: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> system -> {median, rounds}: the median of the valid rounds."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for sample in samples:
        if sample.get("valid"):
            grouped.setdefault((sample["scenario"], sample["system"]), []).append(sample)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, system), group in grouped.items():
        values = [float(s["rps"]) for s in group]
        figures: dict[str, Any] = {
            "median_rps": round(statistics.median(values), 1),
            "rounds": len(values),
            "min_rps": round(min(values), 1),
            "max_rps": round(max(values), 1),
        }
        for key in ("cpu_user_us", "cpu_sys_us"):
            cpu = [float(s[key]) for s in group if key in s]
            figures[key] = round(statistics.median(cpu), 2) if cpu else None
        out.setdefault(scenario, {})[system] = figures
    return out


def ratios(meds: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> system -> {baseline: ratio or None}, from medians of the same run."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, systems in meds.items():
        for system, figures in systems.items():
            row: dict[str, Any] = {}
            for baseline, _label in BASELINES:
                base = systems.get(baseline)
                row[baseline] = (
                    round(figures["median_rps"] / base["median_rps"], 3)
                    if base and base["median_rps"] > 0
                    else None
                )
            out.setdefault(scenario, {})[system] = row
    return out


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _fmt_rps(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def throughput_rows(results: Results) -> list[list[str]]:
    rows = []
    meds = results["throughput"]["medians"]
    rats = results["throughput"]["ratios"]
    for scenario in results["scenarios"]:
        for system in results["systems_requested"]:
            fig = meds.get(scenario, {}).get(system)
            if fig is None:
                continue
            rat = rats[scenario][system]
            rows.append(
                [
                    scenario,
                    system,
                    _fmt_rps(fig["median_rps"]),
                    f"{_fmt_rps(fig['min_rps'])}–{_fmt_rps(fig['max_rps'])}",
                    *(_fmt_ratio(rat[b]) for b, _ in BASELINES),
                    _fmt_us(fig.get("cpu_user_us")),
                    _fmt_us(fig.get("cpu_sys_us")),
                ]
            )
    return rows


def _fmt_us(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


THROUGHPUT_HEAD = [
    "scenario",
    "system",
    "median req/s",
    "range",
    *(lbl for _, lbl in BASELINES),
    "user µs/req",
    "sys µs/req",
]
LATENCY_HEAD = [
    "scenario",
    "system",
    "target/s",
    "achieved/s",
    "held",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "p99 of rounds ms",
    "errors+unanswered",
    "client lag p99 ms",
]


def latency_rows(results: Results) -> list[list[str]]:
    rows = []
    lat = results.get("latency", {})
    for scenario in results["scenarios"]:
        for system in results["systems_requested"]:
            r = lat.get(scenario, {}).get(system)
            if r is None:
                continue
            if "error" in r:
                rows.append([scenario, system, "—", "—", "error", *["—"] * 6, r["error"][:60]])
                continue
            rows.append(
                [
                    scenario,
                    system,
                    f"{r['target_rate']:,.0f}",
                    f"{r['achieved_rate']:,.0f}",
                    "yes" if r["held"] else "NO",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    f"{r['p999_ms']:.2f}",
                    f"{r['max_ms']:.2f}",
                    " / ".join(f"{p:.2f}" for p in r.get("p99_rounds_ms", [r["p99_ms"]])),
                    str(r["errors"] + r["unfinished"]),
                    f"{r['client_lag_p99_ms']:.2f}",
                ]
            )
    return rows


def text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def problems(results: Results) -> list[str]:
    """One line per system that did not start or a scenario that was not measured."""
    out = []
    for name, state in results["systems"].items():
        if state["status"] in ("failed", "unavailable"):
            out.append(f"**{name}** {state['status']}: {state['error']}")
        for scenario, why in state.get("skipped", {}).items():
            if why != "not applicable":
                out.append(f"**{name}** {scenario} not measured: {why}")
    for sample in results["throughput"]["samples"]:
        if not sample.get("valid"):
            out.append(
                f"**{sample['system']}** {sample['scenario']} round {sample['round']} "
                f"discarded: {sample.get('problem')}"
            )
    for scenario, by_system in results.get("latency", {}).items():
        ref = by_system.get("nginx")
        if ref and "error" not in ref and not ref["held"]:
            out.append(
                f"**paced client** did not hold {ref['target_rate']:,.0f} req/s against nginx "
                f"({scenario}): the rate is beyond this client or machine right now, so the "
                "other systems' `held` verdicts in that scenario say little"
            )
    upstream = results.get("upstream", {})
    if upstream.get("status") == "failed":
        out.append(f"**upstream** failed: {upstream.get('error')}")
    return out


def console_report(results: Results) -> str:
    parts = [
        "",
        "Throughput (wrk, req/s, median of rounds; ratios of medians from this run)",
        text_table(THROUGHPUT_HEAD, throughput_rows(results)),
    ]
    lat_rows = latency_rows(results)
    if lat_rows:
        parts += ["", "Latency at a fixed rate (paced open loop, from scheduled send time)"]
        parts.append(text_table(LATENCY_HEAD, lat_rows))
    issues = problems(results)
    if issues:
        parts += ["", "Problems:"] + [f"  - {line.replace('**', '')}" for line in issues]
    return "\n".join(parts)


def summary_markdown(results: Results, chart_name: str | None) -> str:
    args = results["args"]
    m = results["machine"]
    lines = [
        "# Benchmark summary",
        "",
        "Generated by `python -m bench.harness` — do not edit; rerun instead.",
        f"Run {results['started']} → {results['finished']}; "
        f"{args['rounds']} round(s) × {args['duration']} s per system and scenario, "
        f"rounds interleaved; `wrk -t1 -c{args['connections']}`; {results['pinning']}.",
        "Absolute figures drift by 30 % or more between runs on shared machines; compare "
        "the ratios, which come from one run.",
        "",
        "## Systems",
        "",
        md_table(
            ["system", "status", "what"],
            [[name, s["status"], s["description"]] for name, s in results["systems"].items()],
        ),
        "",
        "## Throughput",
        "",
        "`user µs/req`, `sys µs/req`: the server's CPU time over its wrk runs (every process "
        "of the system, from /proc), per request answered, median of the rounds; the "
        "server runs on one core, so the two add up to about 1 s ÷ req/s.",
        "",
        md_table(THROUGHPUT_HEAD, throughput_rows(results)),
        "",
    ]
    if chart_name:
        lines += [f"![throughput ratios]({chart_name})", ""]
    lat_rows = latency_rows(results)
    if lat_rows:
        lines += [
            "## Latency at a fixed rate",
            "",
            f"`bench.paced`: {args['paced_rate']:,.0f} req/s for {args['paced_duration']} s "
            f"over {args['paced_connections']} keep-alive connections, open loop, "
            f"{args.get('paced_rounds', 1)} interleaved round(s): each row is the round with "
            "the median p99, `p99 of rounds` lists every round's (a system that did not hold "
            "the rate runs once); latency "
            "counted from each request's scheduled send time (no coordinated omission). "
            "`held` = achieved ≥ 95 % of the target; `errors+unanswered` counts requests still "
            "unanswered at the end (counted in the percentiles at their lower bound); "
            "`client lag` = how late the client itself sent (part of every latency).",
            "",
            md_table(LATENCY_HEAD, lat_rows),
            "",
        ]
    issues = problems(results)
    if issues:
        lines += ["## Problems", ""] + [f"- {line}" for line in issues] + [""]
    lines += [
        "## Machine",
        "",
        md_table(["item", "value"], [[k, str(v)] for k, v in m.items()]),
        "",
    ]
    return "\n".join(lines)


def chart(results: Results, path: Path) -> bool:
    """Bar chart of each system's median throughput against each baseline; one panel per
    scenario. Returns False (and writes nothing) when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    rats = results["throughput"]["ratios"]
    scenarios = [s for s in results["scenarios"] if rats.get(s)]
    if not scenarios:
        return False
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 4.2), squeeze=False)
    meds = results["throughput"]["medians"]
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        systems = [s for s in results["systems_requested"] if s in rats[scenario]]
        # Only the baselines measured in this scenario (the floor does not forward).
        baselines = [
            (b, label) for b, label in BASELINES if any(rats[scenario][s][b] for s in systems)
        ]
        width = 0.8 / max(1, len(baselines))
        for j, (baseline, label) in enumerate(baselines):
            values = [rats[scenario][s][baseline] or 0.0 for s in systems]
            xs = [i + (j - (len(baselines) - 1) / 2) * width for i in range(len(systems))]
            bars = ax.bar(xs, values, width, label=label)
            for bar, value in zip(bars, values, strict=True):
                if value:
                    ax.annotate(
                        f"{value:.2f}",
                        (bar.get_x() + bar.get_width() / 2, value),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        labels = [f"{s}\n{meds[scenario][s]['median_rps'] / 1000:.1f}k req/s" for s in systems]
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(systems)), labels, fontsize=8)
        ax.set_title(f"{scenario}: median req/s ÷ baseline's")
        ax.set_ylabel("ratio")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return True


def write_all(results: Results, out_dir: Path, stamp: str) -> dict[str, Path]:
    """`<stamp>.json`, `latest.json`, `ratios.png`, `summary.md`; written via temp files
    and renames so a reader never sees half a file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chart_path = out_dir / "ratios.png"
    tmp_chart = out_dir / "ratios.png.tmp"
    has_chart = chart(results, tmp_chart)
    if has_chart:
        os.replace(tmp_chart, chart_path)
    results["files"] = {"chart": chart_path.name if has_chart else None}
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    paths = {
        "json": out_dir / f"{stamp}.json",
        "latest": out_dir / "latest.json",
        "summary": out_dir / "summary.md",
    }
    for key in ("json", "latest"):
        _atomic_write(paths[key], text)
    _atomic_write(
        paths["summary"], summary_markdown(results, chart_path.name if has_chart else None)
    )
    if has_chart:
        paths["chart"] = chart_path
    return paths


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
