"""Input hygiene and secrets: alert text escaped, hostile alert records skipped, URL credentials
masked in every log line, the web server bound where configured."""

from __future__ import annotations

import logging

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from streams._redact import install_log_redaction, redact_url
from streams.alerting import AlertForwarder, alert_from_record
from streams.app import create_app
from streams.core import AlertEvent, to_alertmanager
from streams.settings import describe, settings_from_env


def alert(room_id: str) -> AlertEvent:
    return AlertEvent(room_id, "RoomSpike", "views_per_sec", "warning", "firing", 0, None, 10_000, 50, 5, 9)


@pytest.mark.parametrize(
    ("room_id", "shown"),
    [
        ("r1", "r1"),
        ("r\n[FIRING] fake", "r\\n[FIRING] fake"),
        ("r\x1b[2J", "r\\x1b[2J"),
        ("r\u202eevil", "r\\u202eevil"),  # right-to-left override
        ("直播间😀", "直播间😀"),
    ],
)
def test_alert_text_escapes_what_it_shows(room_id: str, shown: str) -> None:
    record = to_alertmanager(alert(room_id))
    summary = record["annotations"]["summary"]
    assert f"room {shown} spiked" in summary
    assert summary.isprintable()
    assert record["labels"]["room_id"] == room_id  # labels identify the room: kept exact (JSON-escaped)


GOOD = orjson.dumps(to_alertmanager(alert("r1")))
HOSTILE: list[bytes | None] = [
    None,
    b"",
    b"not json",
    b"\xff\xfe",
    b"[1, 2]",
    b'"text"',
    b"null",
    b"{}",
    b'{"labels": "x"}',
    b'{"labels": {}}',
    b'{"labels": {"a": 1}}',
    b'{"labels": {"a": "b"}, "annotations": []}',
    b'{"labels": {"a": "b"}, "annotations": {"s": null}}',
    b'{"labels": {"a": "b"}, "startsAt": 5}',
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_record_that_is_not_an_alert_is_refused(raw: bytes | None) -> None:
    assert alert_from_record(raw) is None


def test_the_forwarder_counts_and_skips_hostile_records_and_queues_the_rest() -> None:
    registry = CollectorRegistry()
    counters = {n: Counter(f"t_{n}", n, registry=registry) for n in ("sent", "failed", "dropped", "skipped")}
    forwarder = AlertForwarder("http://127.0.0.1:1", **counters)
    forwarder.offer_records(enumerate([*HOSTILE, GOOD]))
    assert forwarder.queued == 1
    assert registry.get_sample_value("t_skipped_total") == len(HOSTILE)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:pass@am.example:9093/x", "https://***@am.example:9093/x"),
        ("http://token@host", "http://***@host"),
        (
            "posting to https://a:b@h1 and sasl_ssl://u:p@h2:9093",
            "posting to https://***@h1 and sasl_ssl://***@h2:9093",
        ),
        ("mail ops@example.com, http://host/a@b", "mail ops@example.com, http://host/a@b"),
        ("no url", "no url"),
    ],
)
def test_credentials_inside_urls_are_masked(text: str, masked: str) -> None:
    assert redact_url(text) == masked


def test_every_log_line_masks_url_credentials(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    install_log_redaction()  # idempotent
    with caplog.at_level(logging.INFO):
        logging.getLogger("any.library").warning("connecting to %s", "https://admin:s3cret@am:9093")
        logging.getLogger("x").info("settings %s", {"url": "http://u:s3cret@h"})
    assert "s3cret" not in caplog.text
    assert "https://***@am:9093" in caplog.text


def test_settings_shown_in_logs_mask_url_credentials() -> None:
    settings = settings_from_env({"LIVEPULSE_ALERTMANAGER_URL": "https://user:pass@am:9093"})
    assert describe(settings)["alertmanager_url"] == "https://***@am:9093"
    assert settings.alertmanager_url == "https://user:pass@am:9093"  # used as given


@pytest.mark.parametrize("host", [None, "127.0.0.1", "0.0.0.0"])
def test_the_web_server_binds_exactly_where_configured(host: str | None, tmp_path: object) -> None:
    env = {"LIVEPULSE_DATA_DIR": str(tmp_path)}
    if host is not None:
        env["LIVEPULSE_WEB_HOST"] = host
    app = create_app(settings_from_env(env))
    assert app.conf.web_bind == (host or "127.0.0.1")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_the_worker_leaves_debug_records_unbuilt_above_debug(level: str, tmp_path: object) -> None:
    """faust's spinner turned the root logger to DEBUG at WARN and above: every library's debug
    call built its record (aiokafka formats each request it sends) for the handler to drop."""
    from streams.cli import make_worker

    worker = make_worker(create_app(settings_from_env({"LIVEPULSE_DATA_DIR": str(tmp_path)})), level)
    root = logging.Logger("root-under-test")
    root.addHandler(logging.StreamHandler())
    root.setLevel(logging.getLevelName(level.upper()))
    worker.on_setup_root_logger(root, root.level)
    assert root.isEnabledFor(logging.DEBUG) is (level == "debug")
