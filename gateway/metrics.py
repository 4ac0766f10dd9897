"""Prometheus exposition: a custom collector that reads the workers' plain counters at
scrape time (the pattern of prometheus_client's gc_collector), so the hot path never
takes a lock or calls ``labels()``.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.counters import LATENCY_BUCKETS

# family -> (help, label names). Names are the contract (§5): dashboards depend on them.
COUNTER_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway_requests_allowed_total": (
        "Requests let through, by how they matched.",
        ("listener", "environment", "match"),
    ),
    "gateway_requests_blocked_total": (
        "Requests refused, by reason.",
        ("listener", "environment", "reason"),
    ),
    "gateway_connections_refused_total": (
        "Connections closed before a request was decided.",
        ("listener", "reason"),
    ),
    "gateway_candidate_disagreements_total": (
        "Requests the candidate list would decide differently from the live list.",
        ("environment", "direction"),
    ),
    "gateway_config_reloads_total": ("Config reload attempts.", ("result",)),
    "gateway_upstream_responses_total": (
        "Responses received from upstreams.",
        ("environment", "code_class"),
    ),
    "gateway_upstream_errors_total": (
        "Upstream requests that failed without a response.",
        ("environment", "kind"),
    ),
}


@dataclass
class WorkerStats:
    """One worker's numbers, as plain data (so several workers' can be summed)."""

    counters: dict[tuple[str, tuple[str, ...]], int] = field(default_factory=dict)
    histograms: dict[str, tuple[list[int], float]] = field(default_factory=dict)
    connections_open: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)


@dataclass
class ConfigState:
    sha256: str
    last_reload_ok: bool
    last_success_ts: float
    allowlist_entries: dict[str, int]
    engine: str
    last_reload_duration_s: float = 0.0
    last_reload_stall_s: float = 0.0


def merge(stats: Iterable[WorkerStats]) -> WorkerStats:
    out = WorkerStats()
    counters: dict[tuple[str, tuple[str, ...]], int] = defaultdict(int)
    hist: dict[str, tuple[list[int], float]] = {}
    conns: dict[str, int] = defaultdict(int)
    flight: dict[str, int] = defaultdict(int)
    for s in stats:
        for k, v in s.counters.items():
            counters[k] += v
        for env, (counts, total) in s.histograms.items():
            if env in hist:
                prev, ptotal = hist[env]
                hist[env] = ([a + b for a, b in zip(prev, counts, strict=True)], ptotal + total)
            else:
                hist[env] = (list(counts), total)
        for listener, n in s.connections_open.items():
            conns[listener] += n
        for listener, n in s.in_flight.items():
            flight[listener] += n
    out.counters, out.histograms = dict(counters), hist
    out.connections_open, out.in_flight = dict(conns), dict(flight)
    return out


class GatewayCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], WorkerStats],
        config: Callable[[], ConfigState],
    ) -> None:
        self._stats = stats
        self._config = config

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        cfg = self._config()
        families: dict[str, CounterMetricFamily] = {
            name: CounterMetricFamily(name.removesuffix("_total"), doc, labels=list(labels))
            for name, (doc, labels) in COUNTER_FAMILIES.items()
        }
        for (family, labels), value in sorted(stats.counters.items()):
            fam = families.get(family)
            if fam is not None:
                fam.add_metric(list(labels), value)
        yield from families.values()

        opened = GaugeMetricFamily(
            "gateway_connections_open", "Client connections open.", labels=["listener"]
        )
        for k, v in sorted(stats.connections_open.items()):
            opened.add_metric([k], v)
        yield opened
        flight = GaugeMetricFamily(
            "gateway_requests_in_flight", "Requests being forwarded.", labels=["listener"]
        )
        for k, v in sorted(stats.in_flight.items()):
            flight.add_metric([k], v)
        yield flight

        latency = HistogramMetricFamily(
            "gateway_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers.",
            labels=["environment"],
        )
        for env, (counts, total) in sorted(stats.histograms.items()):
            acc, buckets = 0, []
            for bound, c in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                acc += c
                buckets.append((_bound(bound), acc))
            latency.add_metric([env], buckets, total)
        yield latency

        yield GaugeMetricFamily(
            "gateway_config_last_reload_successful",
            "1 when the last reload attempt succeeded.",
            value=1 if cfg.last_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful (re)load.",
            value=cfg.last_success_ts,
        )
        # Not in the contract's list: what a reload costs, for the reload benchmark and for
        # operators of very large lists.
        yield GaugeMetricFamily(
            "gateway_config_last_reload_duration_seconds",
            "Read, parse, validate, compile and swap time of the last applied reload.",
            value=cfg.last_reload_duration_s,
        )
        yield GaugeMetricFamily(
            "gateway_config_last_reload_loop_stall_seconds",
            "Longest event-loop stall measured during the last applied reload.",
            value=cfg.last_reload_stall_s,
        )
        info = GaugeMetricFamily("gateway_config_info", "The config in force.", labels=["sha256"])
        info.add_metric([cfg.sha256], 1)
        yield info
        entries = GaugeMetricFamily(
            "gateway_allowlist_entries",
            "Secure endpoints per environment (hostname not included).",
            labels=["environment"],
        )
        for env, n in sorted(cfg.allowlist_entries.items()):
            entries.add_metric([env], n)
        yield entries
        build = GaugeMetricFamily(
            "gateway_build_info", "Build information.", labels=["version", "engine", "python"]
        )
        build.add_metric([__version__, cfg.engine, platform.python_version()], 1)
        yield build


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


def stats_of(
    counters_keys: Sequence[tuple[str, tuple[str, ...]]], values: Sequence[int]
) -> dict[tuple[str, tuple[str, ...]], int]:
    return dict(zip(counters_keys, values, strict=False))
