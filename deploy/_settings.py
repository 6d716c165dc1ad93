"""Settings of the local broker and the files rendered from them (pure, no I/O).

``BrokerSettings`` says where the broker runs; ``server_properties`` and
``LOG4J_PROPERTIES`` are what it runs with; ``fingerprint`` identifies both so
that a broker started with other settings is recognised and replaced.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.exceptions import BrokerError

KAFKA_VERSION = "3.9.1"
HOST = "127.0.0.1"
DEFAULT_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
POM = Path(__file__).resolve().parent / "pom.xml"
CACHE_DIR = POM.parent.parent / ".cache" / "kafka"
JVM_OPTIONS = ("-Xmx1g", "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true")

# stdout is redirected to kafka.log; WARN keeps it small, plus lifecycle lines.
LOG4J_PROPERTIES = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how the local broker runs; build it with :meth:`from_env`."""

    work_dir: Path
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    lib_dir: Path = CACHE_DIR / "lib"
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 20.0
    #: a SASL_SSL listener (SCRAM-SHA-512 over TLS) on this port, beside the PLAINTEXT one on
    #: loopback that the broker itself and the readiness check use (None: no such listener)
    sasl_ssl_port: int | None = None
    #: PKCS12 keystore with the broker's key and certificate chain, and its password
    keystore: Path | None = None
    keystore_password: str = field(default="", repr=False)
    #: SCRAM-SHA-512 credentials created when the storage is formatted: (user, password) pairs
    scram_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        ports = [self.port, self.controller_port]
        if self.sasl_ssl_port is not None:
            ports.append(self.sasl_ssl_port)
            if self.keystore is None or not self.keystore_password or not self.scram_users:
                raise BrokerError("a SASL_SSL listener needs a keystore, its password and SCRAM users")
        for port in ports:
            if not 0 < port < 65536:
                raise BrokerError(f"invalid port {port}")
        if len(set(ports)) != len(ports):
            raise BrokerError(f"two listeners on one port: {ports}")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        port: int | None = None,
        controller_port: int | None = None,
        work_dir: Path | None = None,
    ) -> BrokerSettings:
        """Flags win over ``LIVEPULSE_KAFKA_PORT|CONTROLLER_PORT|DIR``, which win over defaults."""
        try:
            port = port or int(environ.get("LIVEPULSE_KAFKA_PORT", DEFAULT_PORT))
            controller_port = controller_port or int(
                environ.get("LIVEPULSE_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT)
            )
        except ValueError as exc:
            raise BrokerError(f"bad Kafka port in the environment: {exc}") from None
        env_dir = environ.get("LIVEPULSE_KAFKA_DIR")
        work_dir = work_dir or (Path(env_dir) if env_dir else CACHE_DIR / f"run-{port}")
        return cls(work_dir=work_dir.resolve(), port=port, controller_port=controller_port)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str | None:
        return None if self.sasl_ssl_port is None else f"{HOST}:{self.sasl_ssl_port}"

    @property
    def server_properties(self) -> Path:
        return self.work_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.work_dir / "broker.pid"

    @property
    def fingerprint_file(self) -> Path:
        return self.work_dir / "broker.fingerprint"


@dataclass(frozen=True, slots=True)
class Broker:
    """A ready broker; ``reused`` when it was already running with these settings."""

    settings: BrokerSettings
    pid: int
    reused: bool = field(default=False, compare=False)

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap


def server_properties(settings: BrokerSettings) -> dict[str, str]:
    """Single-node combined broker+controller; every replication factor 1."""
    port, cport = settings.port, settings.controller_port
    listeners, advertised = [f"PLAINTEXT://{HOST}:{port}"], [f"PLAINTEXT://{HOST}:{port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    secure: dict[str, str] = {}
    if settings.sasl_ssl_port is not None:
        listeners.append(f"SASL_SSL://{HOST}:{settings.sasl_ssl_port}")
        advertised.append(f"SASL_SSL://{HOST}:{settings.sasl_ssl_port}")
        protocols.append("SASL_SSL:SASL_SSL")
        secure = {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            # the server side of SCRAM needs a login module; the credentials live in the metadata log
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(settings.keystore),
            "ssl.keystore.password": settings.keystore_password,
            "ssl.key.password": settings.keystore_password,
            "ssl.client.auth": "none",
        }
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{cport}",
        "controller.listener.names": "CONTROLLER",
        "listeners": ",".join([*listeners, f"CONTROLLER://{HOST}:{cport}"]),
        "advertised.listeners": ",".join(advertised),
        "listener.security.protocol.map": ",".join(protocols),
        **secure,
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(settings.work_dir / "data"),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Changelogs are compacted topics.
        "log.cleaner.enable": "true",
    }


def render_properties(props: Mapping[str, str]) -> str:
    """A Java ``.properties`` file (values escaped for backslashes and newlines)."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n")

    lines = ["# Written by deploy/localkafka.py; rewritten on every start."]
    lines += [f"{key}={escape(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def fingerprint(settings: BrokerSettings) -> str:
    """Identifies everything a running broker was started with; a change means restart."""
    parts = (
        KAFKA_VERSION,
        render_properties(server_properties(settings)),
        *(f"{user}:{password}" for user, password in settings.scram_users),
        LOG4J_PROPERTIES,
        *JVM_OPTIONS,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, no leading '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
