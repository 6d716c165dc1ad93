"""SASL_SSL end to end: a broker with a SASL_SSL listener (SCRAM-SHA-512 over TLS, a CA and broker
certificate made for the test), and every client livepulse has connecting through it: the topic
tooling and the load-test producer (``livepulse loadtest produce``), the worker's data plane and its
faust agents (the spike-rule control agent). A wrong password or an untrusted certificate stops the
worker at start with an error naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from deploy.exceptions import BrokerError
from deploy.localkafka import BrokerSettings, ensure_broker, stop_broker
from streams._topology import check_credentials
from streams.exceptions import ConfigError
from streams.settings import settings_from_env
from tests.integration.pki import PASSWORD, Pki, make_pki
from tests.integration.workers import REPO, Deployment, Worker, eventually, free_port, late_relay

pytestmark = pytest.mark.integration

USER, USER_PASSWORD = "livepulse", "scram-pw-for-tests"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerSettings, Pki]]:
    base = tmp_path_factory.mktemp("sasl-ssl")
    pki = make_pki(base / "pki")
    broker = BrokerSettings(
        work_dir=base / "kafka",
        port=free_port(),
        controller_port=free_port(),
        sasl_ssl_port=free_port(),
        keystore=pki.keystore,
        keystore_password=PASSWORD,
        scram_users=((USER, USER_PASSWORD),),
    )
    try:
        ensure_broker(broker)
    except BrokerError as exc:
        pytest.fail(f"the SASL_SSL broker could not start: {exc}", pytrace=False)
    try:
        yield broker, pki
    finally:
        stop_broker(broker)


def security_env(ca: Path, password: str = USER_PASSWORD) -> dict[str, str]:
    return {
        "LIVEPULSE_SECURITY_PROTOCOL": "SASL_SSL",
        "LIVEPULSE_SASL_MECHANISM": "SCRAM-SHA-512",
        "LIVEPULSE_SASL_USERNAME": USER,
        "LIVEPULSE_SASL_PASSWORD": password,
        "LIVEPULSE_SSL_CAFILE": str(ca),
    }


async def test_worker_agents_producer_and_topic_tooling_connect_over_sasl_ssl(
    secure_broker: tuple[BrokerSettings, Pki], tmp_path: Path
) -> None:
    broker, pki = secure_broker
    bootstrap = broker.sasl_ssl_bootstrap
    assert bootstrap is not None
    secure = security_env(pki.ca_pem)
    prefix = f"sasl{uuid.uuid4().hex[:6]}"
    # The load-test producer creates the input topics (topic tooling) and sends over SASL_SSL.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPULSE_")} | secure
    produced = subprocess.run(
        [sys.executable, "-m", "streams", "loadtest", "produce", "--brokers", bootstrap, "--events", "3000",
         "--rooms", "50", "--users", "500", "--scenario", "steady", "--topic-prefix", prefix, "--no-truth"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr[-3000:]
    topics = {f"LIVEPULSE_TOPIC_{k.upper()}": f"{prefix}.{k}" for k in ("viewer", "order", "gift")}
    deployment = Deployment(bootstrap, extra_env=secure | topics)
    worker = Worker(deployment, tmp_path, "sasl")
    try:
        await worker.wait_ready()  # topic checks and creation, faust and the data plane: all SASL_SSL
        await eventually(
            lambda: worker.metric("livepulse_events_applied_total") >= 3000,
            "the data plane consumed the events",
        )
        await eventually(
            lambda: worker.metric("livepulse_windows_emitted_total") > 0, "windows published (transactions)"
        )
        # A faust agent (spike-rule control) consumes its topic over SASL_SSL.
        client = settings_from_env(secure).security.client_kwargs()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **client)
        await producer.start()
        try:
            override = {"scope": "room", "key": "r1", "metric": "views_per_sec", "set": {"ratio": 50.0}}
            await producer.send_and_wait(deployment.topics.control, orjson.dumps(override))
        finally:
            await producer.stop()
        await eventually(
            lambda: worker.metric("livepulse_rule_overrides") == 1, "the control agent applied it"
        )
        worker.check_alive()
    finally:
        worker.kill()
    assert USER_PASSWORD not in worker.log_path.read_text(errors="replace")


@pytest.mark.parametrize(
    ("what", "setting"),
    [("wrong password", "LIVEPULSE_SASL_PASSWORD"), ("untrusted certificate", "LIVEPULSE_SSL_CAFILE")],
)
def test_bad_credentials_fail_at_start_naming_the_setting(
    secure_broker: tuple[BrokerSettings, Pki], tmp_path: Path, what: str, setting: str
) -> None:
    broker, pki = secure_broker
    assert broker.sasl_ssl_bootstrap is not None
    if what == "wrong password":
        secure = security_env(pki.ca_pem, password="not-the-password")
    else:
        secure = security_env(pki.other_ca_pem)
    env = Deployment(broker.sasl_ssl_bootstrap, extra_env=secure).env(free_port(), tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "streams", "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("livepulse: ") and setting in last, done.stderr[-3000:]
    assert "not-the-password" not in done.stderr


async def test_bad_credentials_are_named_even_when_the_brokers_answer_late(
    secure_broker: tuple[BrokerSettings, Pki], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker (re)starting while its brokers restart, with a wrong password: the credential
    check waits for them under LIVEPULSE_BROKER_WAIT_MS, then names the setting."""
    broker, pki = secure_broker
    assert broker.sasl_ssl_bootstrap is not None
    secure = security_env(pki.ca_pem, password="not-the-password")
    async with late_relay(broker.sasl_ssl_bootstrap, 1.5) as relayed:
        settings = settings_from_env(
            secure | {"LIVEPULSE_BROKERS": relayed, "LIVEPULSE_BROKER_WAIT_MS": "30000"}
        )
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="LIVEPULSE_SASL_PASSWORD"):
            await check_credentials(settings)
        assert time.monotonic() - t0 >= 1.4
    assert "no broker answered the credential check" in caplog.text
