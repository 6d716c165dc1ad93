"""Grafana dashboards as code (grafanalib): an operations overview and a business view.

``make dashboards`` (``python -m deploy.generate``) writes them to ``deploy/grafana/*.json``,
which compose and Kubernetes provision; a test fails when the committed JSON is stale, and
the Prometheus integration test evaluates every panel's query against a live worker.
Queries read the recording rules of ``deploy/prometheus/livepulse.rules.yml`` where one exists,
so dashboards and alerts agree on what "DLQ ratio" or "checkpoint p99" means.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from grafanalib.core import Dashboard, GridPos, Stat, Target, Template, Templating, Time, TimeSeries

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job="livepulse"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    stat: bool = False


OPERATIONS: tuple[PanelSpec, ...] = (
    PanelSpec("Workers up", (Query(f"sum(up{{{JOB}}})", "up"),), stat=True),
    PanelSpec(
        "Partitions assigned",
        (Query("sum(livepulse:assigned_partitions:sum)", "partitions"),),
        stat=True,
        description="Input partition numbers owned by all workers; workers beyond this count sit idle.",
    ),
    PanelSpec(
        "Operational alerts",
        (Query('count by (alertstate) (ALERTS{alertname=~"Livepulse.*"}) or vector(0)', "{{alertstate}}"),),
        stat=True,
    ),
    PanelSpec(
        "Events consumed / s",
        (Query("sum by (topic) (livepulse:events_consumed:rate1m)", "{{topic}}"),),
        unit="ops",
    ),
    PanelSpec(
        "Events applied / s",
        (Query("sum by (topic) (livepulse:events_applied:rate1m)", "{{topic}}"),),
        unit="ops",
    ),
    PanelSpec(
        "Consumer lag",
        (
            Query("sum by (topic) (livepulse:consumer_lag_messages:sum)", "{{topic}}"),
            Query("sum by (topic) (livepulse_input_uncommitted_messages)", "{{topic}} uncommitted"),
        ),
        description="Messages behind the last stable offset; growing lag means the workers cannot keep up. "
        "Uncommitted: messages of open upstream transactions, not readable yet; they hold the watermark.",
    ),
    PanelSpec(
        "Watermark delay",
        (
            Query(
                "max by (instance, partition) (livepulse_watermark_delay_seconds)",
                "{{instance}} p{{partition}}",
            ),
        ),
        unit="s",
        description="Wall clock minus the partition watermark; windows close this long after their end.",
    ),
    PanelSpec(
        "Watermark holds after input outages",
        (Query("sum by (instance) (increase(livepulse_watermark_holds_total[5m]))", "{{instance}}"),),
        description="Each hold delays window closes by LIVEPULSE_OUTAGE_HOLD_MS after an input stalled "
        "(one per task and broker outage); see the RUNBOOK's LivepulseWatermarkHeldOften.",
    ),
    PanelSpec(
        "Dead-letter ratio",
        (Query("livepulse:events_invalid:ratio_rate1m", "{{topic}}"),),
        unit="percentunit",
    ),
    PanelSpec(
        "Dead letters / s by reason",
        (Query("sum by (reason) (livepulse:events_invalid:rate1m)", "{{reason}}"),),
        unit="ops",
    ),
    PanelSpec(
        "Late ratio",
        (Query("livepulse:events_late:ratio_rate1m", "{{topic}}"),),
        unit="percentunit",
    ),
    PanelSpec(
        "Checkpoint and batch p99",
        (
            Query("livepulse:checkpoint_seconds:p99_rate5m", "checkpoint p99"),
            Query("livepulse:batch_processing_seconds:p99_rate5m", "batch p99"),
        ),
        unit="s",
    ),
    PanelSpec(
        "State restore",
        (
            Query(
                "sum by (instance) (livepulse_restore_seconds_sum)"
                " / sum by (instance) (livepulse_restore_seconds_count)",
                "{{instance}} mean restore",
            ),
        ),
        unit="s",
        description="Mean time to restore one partition from the changelog since the worker started.",
    ),
    PanelSpec(
        "Active rooms",
        (Query("sum by (instance) (livepulse_active_rooms)", "{{instance}}"),),
    ),
    PanelSpec(
        "Resident memory",
        (Query(f"process_resident_memory_bytes{{{JOB}}}", "{{instance}}"),),
        unit="bytes",
    ),
    PanelSpec(
        "CPU",
        (Query(f"rate(process_cpu_seconds_total{{{JOB}}}[1m])", "{{instance}}"),),
        unit="percentunit",
    ),
    PanelSpec(
        "Alert forwarding to Alertmanager / s",
        (
            Query("sum(rate(livepulse_alerts_forward_sent_total[1m]))", "sent"),
            Query("sum(rate(livepulse_alerts_forward_failed_total[1m]))", "failed"),
            Query("sum(rate(livepulse_alerts_forward_dropped_total[1m]))", "dropped"),
        ),
        unit="ops",
    ),
    PanelSpec(
        "Leaderboard merge wait (event time)",
        (Query("max(livepulse_leaderboard_wait_seconds)", "oldest held window"),),
        unit="s",
        description="From the oldest window the merge holds to the furthest task's progress; "
        "about a window normally. It grows while some task sends no progress "
        "(LivepulseLeaderboardStalled).",
    ),
)

BUSINESS: tuple[PanelSpec, ...] = (
    PanelSpec(
        "Room spike alerts firing",
        (Query("sum(livepulse_alerts_firing)", "firing"),),
        stat=True,
    ),
    PanelSpec(
        "Active rooms",
        (Query("sum(livepulse_active_rooms)", "rooms"),),
        stat=True,
    ),
    PanelSpec(
        "Room windows published / s",
        (Query("sum(rate(livepulse_windows_emitted_total[1m]))", "windows"),),
        unit="ops",
        stat=True,
    ),
    PanelSpec(
        "Top rooms by GMV (last window, minor units)",
        (Query("max by (rank) (livepulse_top_room_gmv_minor)", "rank {{rank}}"),),
        description="Per worker ranking of its own rooms, by rank; room names: GET /rooms/top?metric=gmv.",
    ),
    PanelSpec(
        "Top rooms by views (last window)",
        (Query("max by (rank) (livepulse_top_room_views)", "rank {{rank}}"),),
        description="Per worker ranking of its own rooms, by rank; room names: GET /rooms/top?metric=views.",
    ),
    PanelSpec(
        "Paid orders / s and GMV / s (platform, by window published)",
        (
            Query("sum(rate(livepulse_orders_paid_total[1m]))", "paid orders / s"),
            Query("sum(rate(livepulse_gmv_minor_total[1m]))", "GMV minor units / s"),
        ),
    ),
    PanelSpec(
        "Order, viewer and gift events / s",
        (Query("sum by (topic) (livepulse:events_applied:rate1m)", "{{topic}}"),),
        unit="ops",
    ),
    PanelSpec(
        "Room spike alerts firing by metric",
        (Query("sum by (metric) (livepulse_alerts_firing)", "{{metric}}"),),
    ),
    PanelSpec(
        "Room spike alerts started / h",
        (Query("sum(increase(livepulse_alerts_fired_total[1h])) or vector(0)", "started"),),
    ),
)


def _panel(spec: PanelSpec, pos: GridPos) -> Any:
    targets = [
        Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, q in enumerate(spec.queries)
    ]
    common: dict[str, Any] = {
        "title": spec.title,
        "description": spec.description or None,
        "dataSource": DATASOURCE,
        "targets": targets,
        "gridPos": pos,
    }
    if spec.stat:  # grafanalib names the unit "format" on stat panels
        return Stat(format=spec.unit, reduceCalc="lastNotNull", **common)
    return TimeSeries(unit=spec.unit, **common)


def _layout(specs: tuple[PanelSpec, ...]) -> Iterator[tuple[PanelSpec, GridPos]]:
    """Stats four to a row on top, time series two to a row below."""
    x = y = previous_h = 0
    for spec in specs:
        w, h = (6, 4) if spec.stat else (12, 8)
        if x + w > 24:
            x, y = 0, y + previous_h
        yield spec, GridPos(h=h, w=w, x=x, y=y)
        x, previous_h = x + w, h


def build(title: str, uid: str, specs: tuple[PanelSpec, ...]) -> dict[str, Any]:
    datasource = Template(
        name="datasource", query="prometheus", type="datasource", label="Prometheus", default="Prometheus"
    )
    dashboard = Dashboard(
        title=title,
        uid=uid,
        tags=["livepulse"],
        timezone="utc",
        refresh="30s",
        time=Time("now-1h", "now"),
        templating=Templating(list=[datasource]),
        panels=[_panel(spec, pos) for spec, pos in _layout(specs)],
    ).auto_panel_ids()
    data: dict[str, Any] = dashboard.to_json_data()
    return data


DASHBOARDS: dict[str, tuple[str, str, tuple[PanelSpec, ...]]] = {
    "livepulse-operations": ("livepulse / operations", "livepulse-ops", OPERATIONS),
    "livepulse-business": ("livepulse / business", "livepulse-biz", BUSINESS),
}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) of every panel, for the Prometheus integration test."""
    return [
        (name, spec.title, q.expr)
        for name, (_, _, specs) in DASHBOARDS.items()
        for spec in specs
        for q in spec.queries
    ]
