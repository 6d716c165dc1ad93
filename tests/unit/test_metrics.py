"""Metric hygiene of ``streams.metrics``: no ``_created`` series, build info, runtime collectors,
and per-partition series removed when a partition moves away."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics


def series(metrics: Metrics) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def test_no_created_series() -> None:
    m = Metrics()
    m.events_consumed.labels("live.viewer").inc()
    m.batch_seconds.observe(0.01)
    names = series(m)
    assert "livepulse_events_consumed_total" in names
    assert not [n for n in names if n.endswith("_created")]


def test_build_info_is_one_series_with_versions() -> None:
    m = Metrics()
    (labels,) = series(m)["livepulse_build_info"]
    assert labels["version"] != "unknown"
    assert set(labels) == {"version", "python", "faust", "aiokafka", "prometheus_client"}


def test_process_and_python_collectors_are_on() -> None:
    names = series(Metrics())
    assert "process_resident_memory_bytes" in names
    assert "process_cpu_seconds_total" in names
    assert "python_info" in names
    assert "python_gc_collections_total" in names


def test_forget_partition_removes_only_that_partitions_series() -> None:
    m = Metrics()
    for p in ("0", "1"):
        m.watermark_delay.labels(p).set(1.5)
        for topic in ("live.viewer", "live.order"):
            m.consumer_lag.labels(topic, p).set(7)
            m.uncommitted.labels(topic, p).set(3)
    m.forget_partition(1)
    names = series(m)
    for name in ("livepulse_consumer_lag_messages", "livepulse_input_uncommitted_messages"):
        assert {(s["topic"], s["partition"]) for s in names[name]} == {
            ("live.viewer", "0"),
            ("live.order", "0"),
        }
    assert names["livepulse_watermark_delay_seconds"] == [{"partition": "0"}]
    m.forget_partition(1)  # forgetting twice, or a partition never seen, is harmless
    m.forget_partition(9)
