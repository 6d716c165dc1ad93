"""deploy.localkafka without a broker: rendered files, fingerprint, settings, stale state."""

from __future__ import annotations

import base64
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.localkafka import (
    CACHE_DIR,
    BrokerError,
    BrokerSettings,
    broker_pid,
    ensure_broker,
    fingerprint,
    new_cluster_id,
    render_properties,
    server_properties,
    stop_broker,
)


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value.replace("\\\\", "\\") for key, value in pairs}


@pytest.fixture
def settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(work_dir=tmp_path / "run", port=29092, controller_port=29093)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("process.roles", "broker,controller"),
        ("node.id", "1"),
        ("controller.quorum.voters", "1@127.0.0.1:29093"),
        ("listeners", "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"),
        ("advertised.listeners", "PLAINTEXT://127.0.0.1:29092"),
        ("controller.listener.names", "CONTROLLER"),
        ("offsets.topic.replication.factor", "1"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        ("group.initial.rebalance.delay.ms", "0"),
        ("log.cleaner.enable", "true"),
        ("num.partitions", "1"),
        ("auto.create.topics.enable", "false"),
    ],
)
def test_server_properties_single_node_kraft(settings: BrokerSettings, key: str, value: str) -> None:
    rendered = parse_properties(render_properties(server_properties(settings)))
    assert rendered[key] == value


def test_log_dirs_live_in_the_work_dir(settings: BrokerSettings) -> None:
    log_dirs = Path(server_properties(settings)["log.dirs"])
    assert log_dirs.parent == settings.work_dir


def test_render_properties_escapes_and_round_trips() -> None:
    props = {"a.b": "x", "path": "C:\\kafka\\data", "empty": ""}
    text = render_properties(props)
    assert text.startswith("#") and text.endswith("\n")
    assert "path=C:\\\\kafka\\\\data" in text.splitlines()
    assert parse_properties(text) == props


def test_fingerprint_is_stable(settings: BrokerSettings) -> None:
    same = BrokerSettings(work_dir=settings.work_dir, port=29092, controller_port=29093)
    assert fingerprint(settings) == fingerprint(same)
    assert len(fingerprint(settings)) == 64


@pytest.mark.parametrize(
    "change",
    [{"port": 29094}, {"controller_port": 29095}, {"work_dir": Path("/elsewhere")}],
)
def test_fingerprint_changes_with_what_the_broker_runs_with(
    settings: BrokerSettings, change: dict[str, object]
) -> None:
    other = dataclasses.replace(settings, **change)
    assert fingerprint(other) != fingerprint(settings)


def test_fingerprint_ignores_client_side_timeouts(settings: BrokerSettings) -> None:
    patient = BrokerSettings(
        work_dir=settings.work_dir, port=29092, controller_port=29093, start_timeout_s=1.0
    )
    assert fingerprint(patient) == fingerprint(settings)


def test_from_env_defaults() -> None:
    settings = BrokerSettings.from_env({})
    assert (settings.port, settings.controller_port) == (19092, 19093)
    assert settings.work_dir == (CACHE_DIR / "run-19092").resolve()
    assert settings.bootstrap == "127.0.0.1:19092"


def test_from_env_reads_environment_and_flags_win(tmp_path: Path) -> None:
    env = {
        "LIVEPULSE_KAFKA_PORT": "29092",
        "LIVEPULSE_KAFKA_CONTROLLER_PORT": "29093",
        "LIVEPULSE_KAFKA_DIR": str(tmp_path / "env"),
    }
    from_env = BrokerSettings.from_env(env)
    assert (from_env.port, from_env.controller_port) == (29092, 29093)
    assert from_env.work_dir == tmp_path / "env"
    flagged = BrokerSettings.from_env(env, port=39092, work_dir=tmp_path / "flag")
    assert (flagged.port, flagged.work_dir) == (39092, tmp_path / "flag")


@pytest.mark.parametrize(
    "env",
    [
        {"LIVEPULSE_KAFKA_PORT": "kafka"},
        {"LIVEPULSE_KAFKA_PORT": "70000"},
        {"LIVEPULSE_KAFKA_PORT": "19093"},  # same as the controller port
    ],
)
def test_bad_ports_are_broker_errors(env: dict[str, str]) -> None:
    with pytest.raises(BrokerError):
        BrokerSettings.from_env(env)


def test_cluster_id_is_a_kafka_uuid() -> None:
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_port_taken_by_a_stranger_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as stranger, socket.socket() as spare:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        spare.bind(("127.0.0.1", 0))
        port, controller_port = stranger.getsockname()[1], spare.getsockname()[1]
        settings = BrokerSettings(tmp_path, port=port, controller_port=controller_port)
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port} is in use"):
            ensure_broker(settings)


def test_dead_pid_in_pidfile_is_forgotten(settings: BrokerSettings) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    settings.work_dir.mkdir(parents=True)
    settings.pid_file.write_text(finished.stdout)
    assert broker_pid(settings) is None
    assert not settings.pid_file.exists()


def test_live_process_that_is_not_our_broker_is_left_alone(settings: BrokerSettings) -> None:
    settings.work_dir.mkdir(parents=True)
    settings.pid_file.write_text(f"{os.getpid()}\n")
    assert stop_broker(settings) is None  # and we are still here
    assert not settings.pid_file.exists()


def test_down_is_idempotent_and_creates_nothing(settings: BrokerSettings) -> None:
    assert stop_broker(settings) is None
    assert stop_broker(settings) is None
    assert not settings.work_dir.exists()


def test_a_sasl_ssl_listener_is_added_beside_plaintext(tmp_path: Path) -> None:
    secure = BrokerSettings(
        work_dir=tmp_path / "run",
        port=29092,
        controller_port=29093,
        sasl_ssl_port=29094,
        keystore=tmp_path / "broker.p12",
        keystore_password="pw",
        scram_users=(("u", "p"),),
    )
    props = server_properties(secure)
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:29092,SASL_SSL://127.0.0.1:29094,CONTROLLER://127.0.0.1:29093"
    )
    assert "SASL_SSL://127.0.0.1:29094" in props["advertised.listeners"]
    assert "SASL_SSL:SASL_SSL" in props["listener.security.protocol.map"]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.location"] == str(tmp_path / "broker.p12")
    assert secure.sasl_ssl_bootstrap == "127.0.0.1:29094"
    assert "secret" not in repr(dataclasses.replace(secure, scram_users=(("u", "secret"),)))
    other_users = dataclasses.replace(secure, scram_users=(("u", "q"),))
    assert fingerprint(other_users) != fingerprint(secure)  # new users need a new broker


@pytest.mark.parametrize(
    "change",
    [{"keystore": None}, {"keystore_password": ""}, {"scram_users": ()}, {"sasl_ssl_port": 29092}],
)
def test_a_sasl_ssl_listener_needs_its_keystore_users_and_own_port(tmp_path: Path, change: dict) -> None:
    base = {
        "work_dir": tmp_path,
        "port": 29092,
        "controller_port": 29093,
        "sasl_ssl_port": 29094,
        "keystore": tmp_path / "k.p12",
        "keystore_password": "pw",
        "scram_users": (("u", "p"),),
    }
    with pytest.raises(BrokerError):
        BrokerSettings(**(base | change))
