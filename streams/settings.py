"""One frozen settings object, built once from ``LIVEPULSE_*`` environment variables and CLI flags.

Nothing below this module reads the environment: the object is passed down.
Secrets (the SASL password) are kept out of ``repr`` so they never reach a log.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import Limits

from ._redact import redact_url
from .core import CoreConfig
from .exceptions import ConfigError

ENV_PREFIX = "LIVEPULSE_"
DEFAULT_APP_ID = "livepulse"
#: rooms per ranking of the platform leaderboard, at most. A published record of 1 000 per ranking is
#: ~170 KB (~350 KB with 128-character room ids), and the merge state holds one such ranking pair
#: per window still pending: far below the 8 MiB its topics are created with.
MAX_LEADERBOARD_SIZE = 1_000
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")
#: what the Kafka clients take (aiokafka refuses anything else with a bare AssertionError)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names; inputs must be co-partitioned (equal partition counts)."""

    viewer: str = "live.viewer"
    order: str = "live.order"
    gift: str = "live.gift"
    room_stats: str = "live.room-stats"
    room_sessions: str = "live.room-sessions"
    alerts: str = "live.alerts"
    dlq: str = "live.dlq"
    repartition: str = "livepulse.repartition"
    changelog: str = "livepulse.room-state-changelog"
    control: str = "livepulse.rules"
    #: the platform leaderboard (one partition) and its internal per-task partials (one partition)
    leaderboard: str = "live.leaderboard"
    leaderboard_partials: str = "livepulse.leaderboard-partials"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.viewer, self.order, self.gift)

    def rollup(self, length_ms: int) -> str:
        """The room-stats topic of a rollup length: ``<room_stats>-1m``, ``-1h``, ``-30s``, ``-1500ms``."""
        return f"{self.room_stats}-{duration_label(length_ms)}"


def duration_label(ms: int) -> str:
    """A duration in its largest whole unit: 3600000 -> ``1h``, 60000 -> ``1m``, 1500 -> ``1500ms``."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Client security, passed through to aiokafka unchanged."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (SSL context built when TLS is on)."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return kwargs


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker needs; defaults suit the local broker from ``deploy/``."""

    brokers: str = "127.0.0.1:19092"
    app_id: str = DEFAULT_APP_ID
    topics: Topics = field(default_factory=Topics)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    core: CoreConfig = field(default_factory=CoreConfig)
    limits: Limits = field(default_factory=Limits)
    commit_interval_ms: int = 1_000
    max_batch_records: int = 20_000
    #: the most the consumer fetches and buffers per input partition in one request
    #: (``max_partition_fetch_bytes``, Kafka's default). In a catch-up every partition's buffer is
    #: full: 4 MiB took 70-130 MB more peak RSS at 100 000 rooms and read no faster (RESULTS)
    fetch_partition_bytes: int = 1024 * 1024
    fetch_timeout_ms: int = 200
    create_topics: bool = True
    partitions: int = 4
    #: replication factor and min.insync.replicas of the topics livepulse creates
    replication_factor: int = 1
    min_insync_replicas: int = 1
    #: a checkpoint transaction open longer than this is aborted by the broker
    transaction_timeout_ms: int = 30_000
    #: SIGTERM: the worker exits within this, after a last checkpoint when it can
    shutdown_timeout_ms: int = 20_000
    #: at start, how long the worker waits for a broker to answer before it gives up (a worker
    #: restarted while the brokers restart waits for them instead of exiting at once)
    broker_wait_ms: int = 60_000
    #: the data plane's consumer group: a member silent this long is dropped and its partitions
    #: move (a killed worker's too). Heartbeats go on while a worker restores the partitions it
    #: was given (the main loop restores them after the assignment callback), so a restore may
    #: take longer; each synchronous step of it (decoding one partition's rooms) may not
    group_session_timeout_ms: int = 10_000
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: comma-separated: every Alertmanager of an HA cluster gets every alert (``streams.alerting``)
    alertmanager_url: str | None = None
    #: firing alerts are re-published this often; Alertmanager expires them after 4x this
    alert_resend_ms: int = 60_000
    log_level: str = "info"
    #: faust's data directory (its tables live in memory; this holds only its bookkeeping)
    data_dir: str = ""
    #: allocations between young garbage collections (Python's default is 700); 0 keeps Python's
    #: settings. Room state is millions of long-lived containers that each full collection walks.
    gc_threshold: int = 50_000
    #: at most this often, after a checkpoint, hand the allocator's free pages back to the system
    #: (glibc ``malloc_trim``); 0: never. Sketches and records of a few KB, made and freed at every
    #: window close and checkpoint, fragment the heap: rooms with large audiences grew RSS by
    #: ~80 KiB each over an hour without it, ~19 KiB with it (RESULTS)
    malloc_trim_ms: int = 10_000
    #: a window boundary's records (closed windows, then the changelog of its changed rooms) are
    #: encoded about this many bytes at a time, each slice once the producer holds no more than
    #: twice this unacknowledged: one task's boundary at 100 000 rooms wrote ~40 MB before the
    #: producer took any of it (RESULTS, session 39); 0: all at once
    output_slice_bytes: int = 4 * 1024 * 1024
    #: rooms in each ranking of the platform leaderboard
    leaderboard_size: int = 100
    #: the one ISO 4217 currency GMV and refunds are summed in: orders in another go to the
    #: dead-letter topic (``unsupported_currency``). Empty: any is summed as it comes (minor units
    #: of different currencies added up), with a warning when a second one appears
    currency: str = ""
    #: decode inputs with the native pass of ``schemas/native`` when it is built (same verdicts;
    #: false: the Python loops alone, e.g. to rule the native pass out)
    native_decoders: bool = True
    #: with the native decoders and the native room table: apply a fetch's events as the native
    #: parser reads them (``NativeRooms.apply_raw``), the messages it does not take the split way
    #: in their place (same outputs); false: every message decoded into an event object first
    fused_decode: bool = True
    #: read the fetched record batches natively (``streams/_fetch.py``, ``fetched.rs``): records
    #: handed over in place, with no ``ConsumerRecord`` each (v2 uncompressed batches; others are
    #: read by aiokafka as before); false: aiokafka's ``getmany``
    native_fetch: bool = True
    #: write the output records into Kafka record batches natively (``streams/native/src/batches.rs``,
    #: the bytes aiokafka's builder writes; the native room table writes into them directly);
    #: false: aiokafka's batch builder, a Python call a record
    native_batches: bool = True

    @property
    def faust_data_dir(self) -> str:
        return self.data_dir or os.path.join(tempfile.gettempdir(), "livepulse", self.app_id)

    @property
    def group_id(self) -> str:
        """Consumer group of the batch data plane (faust's own group is ``app_id``)."""
        return f"{self.app_id}-dataplane"

    @property
    def broker_addresses(self) -> list[tuple[str, int]]:
        """``brokers`` as (host, port) pairs (checked at construction)."""
        return [address for broker in self.brokers.split(",") if (address := _broker_address(broker))]

    def __post_init__(self) -> None:
        if self.fetch_partition_bytes < 1024:
            raise ConfigError("fetch_partition_bytes must be >= 1024")
        if self.commit_interval_ms <= 0 or self.max_batch_records <= 0 or self.fetch_timeout_ms < 0:
            raise ConfigError("commit_interval_ms and max_batch_records must be > 0, fetch_timeout_ms >= 0")
        if self.alert_resend_ms <= 0:
            raise ConfigError("alert_resend_ms must be > 0")
        if self.alertmanager_url is not None:
            urls = [url.strip() for url in self.alertmanager_url.split(",")]
            if not all(url.startswith(("http://", "https://")) for url in urls):
                shown = redact_url(self.alertmanager_url)
                raise ConfigError(f"alertmanager_url must be http(s) URLs, comma-separated: {shown!r}")
        if self.partitions <= 0:
            raise ConfigError("partitions must be > 0")
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ConfigError("need 1 <= min_insync_replicas <= replication_factor")
        if self.transaction_timeout_ms <= self.commit_interval_ms:
            raise ConfigError("transaction_timeout_ms must exceed commit_interval_ms")
        if self.shutdown_timeout_ms <= 0:
            raise ConfigError("shutdown_timeout_ms must be > 0")
        if self.broker_wait_ms < 0:
            raise ConfigError("broker_wait_ms must be >= 0")
        if self.group_session_timeout_ms < 6_000:  # the brokers' group.min.session.timeout.ms
            raise ConfigError("group_session_timeout_ms must be >= 6000")
        if not 0 < self.leaderboard_size <= MAX_LEADERBOARD_SIZE:
            raise ConfigError(f"leaderboard_size must be in 1..{MAX_LEADERBOARD_SIZE}")
        if self.gc_threshold < 0 or self.malloc_trim_ms < 0:
            raise ConfigError("gc_threshold and malloc_trim_ms must be >= 0")
        if self.output_slice_bytes < 0:
            raise ConfigError("output_slice_bytes must be >= 0")
        code = self.currency
        if code and not (len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()):
            raise ConfigError(f"currency {self.currency!r} is not an ISO 4217 code (three capital letters)")
        if not 0 < self.web_port < 65536:
            raise ConfigError(f"web_port {self.web_port} out of range")
        if not self.app_id:
            raise ConfigError("app_id must not be empty")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.security.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security_protocol {self.security.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        for broker in self.brokers.split(","):
            if _broker_address(broker) is None:
                raise ConfigError(f"brokers must be host:port, comma-separated; got {redact_url(broker)!r}")
        names = [getattr(self.topics, name) for name in Topics.__dataclass_fields__]
        names += [self.topics.rollup(length) for length in self.core.rollup_windows_ms]
        if not all(names) or len(set(names)) != len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise ConfigError(
                f"topic names must be set and differ from each other: {repeated or 'an empty one'}"
            )


# Environment variable (after the prefix) -> (section, field). Section "" is Settings itself.
_ENV_FIELDS: dict[str, tuple[str, str]] = {
    "BROKERS": ("", "brokers"),
    "APP_ID": ("", "app_id"),
    "COMMIT_INTERVAL_MS": ("", "commit_interval_ms"),
    "MAX_BATCH_RECORDS": ("", "max_batch_records"),
    "FETCH_PARTITION_BYTES": ("", "fetch_partition_bytes"),
    "FETCH_TIMEOUT_MS": ("", "fetch_timeout_ms"),
    "CREATE_TOPICS": ("", "create_topics"),
    "PARTITIONS": ("", "partitions"),
    "REPLICATION_FACTOR": ("", "replication_factor"),
    "MIN_INSYNC_REPLICAS": ("", "min_insync_replicas"),
    "TRANSACTION_TIMEOUT_MS": ("", "transaction_timeout_ms"),
    "SHUTDOWN_TIMEOUT_MS": ("", "shutdown_timeout_ms"),
    "BROKER_WAIT_MS": ("", "broker_wait_ms"),
    "GROUP_SESSION_TIMEOUT_MS": ("", "group_session_timeout_ms"),
    "WEB_HOST": ("", "web_host"),
    "WEB_PORT": ("", "web_port"),
    "ALERTMANAGER_URL": ("", "alertmanager_url"),
    "ALERT_RESEND_MS": ("", "alert_resend_ms"),
    "LOG_LEVEL": ("", "log_level"),
    "DATA_DIR": ("", "data_dir"),
    "GC_THRESHOLD": ("", "gc_threshold"),
    "MALLOC_TRIM_MS": ("", "malloc_trim_ms"),
    "OUTPUT_SLICE_BYTES": ("", "output_slice_bytes"),
    "LEADERBOARD_SIZE": ("", "leaderboard_size"),
    "CURRENCY": ("", "currency"),
    "NATIVE_DECODERS": ("", "native_decoders"),
    "FUSED_DECODE": ("", "fused_decode"),
    "NATIVE_FETCH": ("", "native_fetch"),
    "NATIVE_BATCHES": ("", "native_batches"),
    "BUCKET_MS": ("core", "bucket_ms"),
    "WINDOW_MS": ("core", "window_ms"),
    "GRACE_MS": ("core", "grace_ms"),
    "IDLE_PARTITION_MS": ("core", "idle_partition_ms"),
    "OUTAGE_HOLD_MS": ("core", "outage_hold_ms"),
    "ROOM_IDLE_MS": ("core", "room_idle_ms"),
    "DEDUP_TTL_MS": ("core", "dedup_ttl_ms"),
    "HLL_LG_K": ("core", "hll_lg_k"),
    "MAX_INPUT_LAG_MS": ("core", "max_input_lag_ms"),
    "MAX_SOURCE_DRIFT_MS": ("core", "max_source_drift_ms"),
    "MAX_ROOMS": ("core", "max_rooms"),
    "SESSIONS": ("core", "sessions"),
    "SESSION_GAP_MS": ("core", "session_gap_ms"),
    "ROLLUP_WINDOWS_MS": ("core", "rollup_windows_ms"),
    "NATIVE_CORE": ("core", "native_core"),
    "NATIVE_ROOMS": ("core", "native_rooms"),
    "STATE_FORMAT": ("core", "state_format"),
    "MAX_MESSAGE_BYTES": ("limits", "max_message_bytes"),
    "MAX_AMOUNT_MINOR": ("limits", "max_amount_minor"),
    "MAX_PAST_MS": ("limits", "max_past_ms"),
    "MAX_FUTURE_MS": ("limits", "max_future_ms"),
    "SECURITY_PROTOCOL": ("security", "security_protocol"),
    "SASL_MECHANISM": ("security", "sasl_mechanism"),
    "SASL_USERNAME": ("security", "sasl_username"),
    "SASL_PASSWORD": ("security", "sasl_password"),
    "SSL_CAFILE": ("security", "ssl_cafile"),
    "SSL_CERTFILE": ("security", "ssl_certfile"),
    "SSL_KEYFILE": ("security", "ssl_keyfile"),
    **{f"TOPIC_{name.upper()}": ("topics", name) for name in Topics.__dataclass_fields__},
}

_SECTION_TYPES = {
    "": Settings,
    "core": CoreConfig,
    "limits": Limits,
    "security": KafkaSecurity,
    "topics": Topics,
}


def _broker_address(broker: str) -> tuple[str, int] | None:
    """``host:port`` as a pair; None when it is not one."""
    host, _, port = broker.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``LIVEPULSE_*`` variables, then apply explicit ``overrides`` (CLI flags).

    ``overrides`` use the environment names in lower case (``window_ms=5000``).
    """
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTION_TYPES}
    given = {name: env[ENV_PREFIX + name] for name in _ENV_FIELDS if ENV_PREFIX + name in env}
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :] not in _ENV_FIELDS)
    unknown = [k for k in unknown if k not in _IGNORED_ENV]
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    for name, raw in overrides.items():
        if raw is not None:
            if name.upper() not in _ENV_FIELDS:
                raise ConfigError(f"unknown setting {name!r}")
            given[name.upper()] = raw
    for name, raw in given.items():
        section, attr = _ENV_FIELDS[name]
        values[section][attr] = _coerce(_SECTION_TYPES[section], attr, raw, ENV_PREFIX + name)
    # Internal topics belong to one application: derive their names from the app id unless set.
    app_id = values[""].get("app_id", DEFAULT_APP_ID)
    values["topics"].setdefault("repartition", f"{app_id}.repartition")
    values["topics"].setdefault("changelog", f"{app_id}.room-state-changelog")
    values["topics"].setdefault("control", f"{app_id}.rules")
    values["topics"].setdefault("leaderboard_partials", f"{app_id}.leaderboard-partials")
    try:
        sections = {s: _SECTION_TYPES[s](**values[s]) for s in ("core", "limits", "security", "topics")}
        return Settings(**values[""], **sections)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


# Variables of the local-broker and demo tooling, not the worker.
_IGNORED_ENV = frozenset(
    {"LIVEPULSE_KAFKA_DIR", "LIVEPULSE_KAFKA_PORT", "LIVEPULSE_KAFKA_CONTROLLER_PORT", "LIVEPULSE_DEMO_LOG"}
)


def _coerce(cls: type, attr: str, raw: Any, label: str) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = {f.name: f.type for f in dataclasses.fields(cls)}[attr]
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "tuple[int, ...]":  # a comma-separated list; empty for none
            return tuple(int(part.replace("_", "")) for part in raw.split(",") if part.strip())
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
    except ValueError:
        raise ConfigError(f"{label}={raw!r} is not a valid {kind}") from None
    return raw or None if "None" in kind else raw


def describe(settings: Settings) -> dict[str, Any]:
    """A loggable view of the settings, with secrets masked."""
    out = dataclasses.asdict(settings)
    if out["security"].get("sasl_password"):
        out["security"]["sasl_password"] = "***"
    for key in ("brokers", "alertmanager_url"):
        if out[key]:
            out[key] = redact_url(out[key])
    return out
