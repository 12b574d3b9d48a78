"""Every metric the Grafana dashboard and the Prometheus alert rules query is one a real hub
exports: the PromQL is parsed (promql-parser) for the series it selects, and those names are
looked up in a running hub's /metrics, where a histogram `x` is served as `x_bucket`, `x_sum`
and `x_count` and a counter `x` as `x_total`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.app_helpers import a_set, start_session
from tests.raw import MakeHub, OpenSdk

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fitsync-hub.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

MADE_BY_PROMETHEUS = {"up"}
"""Series Prometheus records itself for every target it scrapes."""

GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
"""Grafana's variables, as it substitutes them before the query reaches Prometheus."""

FAMILY_SERIES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_queries() -> list[str]:
    alerts = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]


def selected_metrics(query: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    return {name for name, _ in selectors(query)}


def selected_labels(query: str) -> set[tuple[str, str]]:
    """(metric, label) for every label a selector of the expression matches on."""
    return {(name, label) for name, labels in selectors(query) for label in labels}


def selectors(query: str) -> list[tuple[str, tuple[str, ...]]]:
    """Each vector selector's metric name and the labels it matches on."""
    for variable, value in GRAFANA_INTERVALS.items():
        query = query.replace(variable, value)
    found: list[tuple[str, tuple[str, ...]]] = []
    _walk(promql_parser.parse(query), found)
    return found


def _walk(node: Any, found: list[tuple[str, tuple[str, ...]]]) -> None:
    if isinstance(node, promql_parser.VectorSelector):
        assert node.name, f"a selector without a metric name: {node}"
        found.append((node.name, tuple(m.name for m in node.matchers.matchers)))
    elif isinstance(node, promql_parser.MatrixSelector):
        _walk(node.vector_selector, found)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, found)
    elif isinstance(node, promql_parser.AggregateExpr):
        _walk(node.expr, found)
        if node.param is not None:
            _walk(node.param, found)
    elif isinstance(node, promql_parser.BinaryExpr):
        _walk(node.lhs, found)
        _walk(node.rhs, found)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr
                    | promql_parser.SubqueryExpr):
        _walk(node.expr, found)


def exported_series(exposition: str) -> set[str]:
    """Every series name the exposition serves or declares (a labelled family with no child
    yet has no sample, but its TYPE line says what it will serve)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in FAMILY_SERIES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def exported_labels(exposition: str) -> set[tuple[str, str]]:
    """(series, label) for every label a sample of the exposition carries."""
    return {(sample.name, label)
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples for label in sample.labels}


def test_the_query_parser_finds_every_selected_metric_and_label_and_only_those() -> None:
    query = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{method="publish"}'
             '[$__rate_interval]))) / on() group_left count(b) > 0'
             ' and max_over_time(c{x!~"y"}[5m:1m]) unless -d')
    assert selected_metrics(query) == {"a_bucket", "b", "c", "d"}
    assert selected_labels(query) == {("a_bucket", "method"), ("c", "x")}


async def test_every_metric_the_dashboard_and_alerts_query_is_exported_by_a_hub(
    make_hub: MakeHub, sdk: OpenSdk,
) -> None:
    hub = await make_hub()
    device, _ = await sdk(hub, hub.token("ann", "device", device="ann-watch"))
    await device.publish(f"session:{await start_session(device)}", a_set("s1"))
    async with httpx.AsyncClient() as http:
        exposition = (await http.get(f"{hub.http_url}/metrics")).text
    exported = exported_series(exposition) | MADE_BY_PROMETHEUS

    dashboard = set().union(*map(selected_metrics, dashboard_queries()))
    alerts = set().union(*map(selected_metrics, alert_queries()))
    assert not dashboard - exported, f"the dashboard queries unknown {sorted(dashboard - exported)}"
    assert not alerts - exported, f"the alerts query unknown {sorted(alerts - exported)}"
    matched = set().union(*map(selected_labels, dashboard_queries() + alert_queries()))
    ours = {(name, label) for name, label in matched if name not in MADE_BY_PROMETHEUS}
    unknown = ours - exported_labels(exposition)
    assert not unknown, f"selectors match on labels the hub does not export: {sorted(unknown)}"
    # What the dashboard is for: connections, deliveries, ack and commit latency, slow-client
    # cuts, broker health, drain state.
    assert {"fitsync_connections", "fitsync_deliveries_total",
            "fitsync_command_duration_seconds_bucket", "fitsync_db_commit_seconds_bucket",
            "fitsync_slow_client_disconnects_total", "fitsync_broker_round_trip_seconds_bucket",
            "fitsync_broker_errors_total", "fitsync_draining"} <= dashboard
    assert "fitsync_draining" in alerts and "fitsync_db_commit_failures_total" in alerts
