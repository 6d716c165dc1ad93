"""Settings from LIVEPULSE_* variables and flags: types, precedence, secrets, typos."""

from __future__ import annotations

import pytest

from streams.exceptions import ConfigError
from streams.settings import describe, settings_from_env


def test_defaults_and_derived_internal_topics() -> None:
    s = settings_from_env({})
    assert s.brokers == "127.0.0.1:19092"
    assert s.topics.viewer == "live.viewer"
    assert s.topics.changelog == "livepulse.room-state-changelog"
    assert s.group_id == "livepulse-dataplane"
    other = settings_from_env({"LIVEPULSE_APP_ID": "eu-1"})
    assert other.topics.changelog == "eu-1.room-state-changelog"
    assert other.topics.repartition == "eu-1.repartition"


def test_environment_is_typed_and_flags_win() -> None:
    env = {
        "LIVEPULSE_WINDOW_MS": "5_000",
        "LIVEPULSE_BUCKET_MS": "500",
        "LIVEPULSE_CREATE_TOPICS": "false",
        "LIVEPULSE_TOPIC_VIEWER": "v",
        "LIVEPULSE_WEB_PORT": "7000",
        "LIVEPULSE_MAX_PAST_MS": "60000",
    }
    s = settings_from_env(env, web_port=7100, grace_ms=None)
    assert (s.core.window_ms, s.core.bucket_ms, s.create_topics) == (5_000, 500, False)
    assert (s.topics.viewer, s.web_port, s.limits.max_past_ms, s.core.grace_ms) == ("v", 7100, 60_000, 2_000)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEPULSE_WINDOW_MS": "ten"}, "LIVEPULSE_WINDOW_MS='ten' is not a valid int"),
        ({"LIVEPULSE_CREATE_TOPICS": "maybe"}, "not a valid bool"),
        ({"LIVEPULSE_WINDOW_SIZE": "1"}, "unknown settings: LIVEPULSE_WINDOW_SIZE"),
        ({"LIVEPULSE_WINDOW_MS": "1500"}, "not a multiple of bucket_ms"),
        ({"LIVEPULSE_WEB_PORT": "70000"}, "web_port 70000 out of range"),
        # bounded so that no state record outgrows the 8 MiB of the topics it goes to
        ({"LIVEPULSE_LEADERBOARD_SIZE": "1001"}, r"leaderboard_size must be in 1\.\.1000"),
        ({"LIVEPULSE_HLL_LG_K": "17"}, r"hll_lg_k must be in 4\.\.16"),
        ({"LIVEPULSE_MALLOC_TRIM_MS": "-1"}, "malloc_trim_ms must be >= 0"),
        ({"LIVEPULSE_OUTPUT_SLICE_BYTES": "-1"}, "output_slice_bytes must be >= 0"),
        ({"LIVEPULSE_GROUP_SESSION_TIMEOUT_MS": "3000"}, "group_session_timeout_ms must be >= 6000"),
        ({"LIVEPULSE_CURRENCY": "usd"}, "currency 'usd' is not an ISO 4217 code"),
        # refused at start, not by a client or faust later (a bare ValueError or AssertionError)
        ({"LIVEPULSE_BROKERS": "kafka1"}, "brokers must be host:port"),
        ({"LIVEPULSE_BROKERS": "kafka1:9092,kafka2"}, "brokers must be host:port"),
        ({"LIVEPULSE_SECURITY_PROTOCOL": "TLS"}, "security_protocol 'TLS' is not one of PLAINTEXT"),
        ({"LIVEPULSE_LOG_LEVEL": "loud"}, "log_level 'loud' is not one of"),
        ({"LIVEPULSE_APP_ID": ""}, "app_id must not be empty"),
        # an output written into an input, or two outputs into one topic
        ({"LIVEPULSE_TOPIC_ROOM_STATS": "live.viewer"}, r"topic names must .* \['live.viewer'\]"),
        ({"LIVEPULSE_TOPIC_ALERTS": "live.dlq"}, r"\['live.dlq'\]"),
        ({"LIVEPULSE_TOPIC_ALERTS": ""}, "an empty one"),
        ({"LIVEPULSE_TOPIC_ROOM_STATS": "x", "LIVEPULSE_TOPIC_VIEWER": "x-1m"}, r"\['x-1m'\]"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_env(env)


def test_secrets_never_reach_repr_or_the_description() -> None:
    s = settings_from_env(
        {
            "LIVEPULSE_SASL_MECHANISM": "SCRAM-SHA-512",
            "LIVEPULSE_SASL_USERNAME": "u",
            "LIVEPULSE_SASL_PASSWORD": "hunter2",
        }
    )
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(describe(s))
    assert s.security.client_kwargs()["sasl_plain_password"] == "hunter2"


def test_delivery_settings() -> None:
    s = settings_from_env(
        {
            "LIVEPULSE_REPLICATION_FACTOR": "3",
            "LIVEPULSE_MIN_INSYNC_REPLICAS": "2",
            "LIVEPULSE_TRANSACTION_TIMEOUT_MS": "60000",
            "LIVEPULSE_SHUTDOWN_TIMEOUT_MS": "30000",
        }
    )
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    assert (s.transaction_timeout_ms, s.shutdown_timeout_ms) == (60_000, 30_000)
    with pytest.raises(ConfigError, match="min_insync_replicas"):
        settings_from_env({"LIVEPULSE_REPLICATION_FACTOR": "1", "LIVEPULSE_MIN_INSYNC_REPLICAS": "2"})
    with pytest.raises(ConfigError, match="transaction_timeout_ms"):
        settings_from_env({"LIVEPULSE_TRANSACTION_TIMEOUT_MS": "500"})


def test_session_gap_and_rollup_windows_come_from_the_environment() -> None:
    s = settings_from_env(
        {"LIVEPULSE_SESSION_GAP_MS": "60000", "LIVEPULSE_ROLLUP_WINDOWS_MS": "30000, 3_600_000"}
    )
    assert s.core.session_gap_ms == 60_000 and s.core.rollup_windows_ms == (30_000, 3_600_000)
    assert [s.topics.rollup(length) for length in s.core.rollup_windows_ms] == [
        "live.room-stats-30s",
        "live.room-stats-1h",
    ]
    assert settings_from_env({}).core.rollup_windows_ms == (60_000, 3_600_000)
    assert settings_from_env({"LIVEPULSE_ROLLUP_WINDOWS_MS": ""}).core.rollup_windows_ms == ()
    assert settings_from_env({}).core.sessions
    assert not settings_from_env({"LIVEPULSE_SESSIONS": "false"}).core.sessions
    with pytest.raises(ConfigError, match="multiple"):
        settings_from_env({"LIVEPULSE_ROLLUP_WINDOWS_MS": "45000"})


def test_brokers_listed_with_spaces_reach_every_client_without_them(tmp_path: object) -> None:
    from streams.app import create_app

    settings = settings_from_env(
        {"LIVEPULSE_BROKERS": "kafka1:9092, kafka2:9093", "LIVEPULSE_DATA_DIR": str(tmp_path)}
    )
    assert settings.broker_addresses == [("kafka1", 9092), ("kafka2", 9093)]
    assert [str(url) for url in create_app(settings).conf.broker] == [
        "kafka://kafka1:9092",
        "kafka://kafka2:9093",
    ]
