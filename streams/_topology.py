"""Topic checks and creation: inputs co-partitioned, internal and output topics shaped to match.

Missing topics are created (when allowed) with the configured replication
factor and ``min.insync.replicas``; existing ones are verified — partition
counts and the changelog's compaction — and a mismatch stops the worker with
an error naming the topic and the fix, instead of a crash loop later.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from aiokafka import codec
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

from .exceptions import ConfigError, InfrastructureError, TopologyError
from .settings import Settings

log = logging.getLogger(__name__)

UNKNOWN_TOPIC = 3
#: the largest record livepulse writes to its own state topics (the changelog, the leaderboard's
#: partials and output): its producers' ``max_request_size``. Brokers default to 1 MiB. A room
#: record holds one unique-viewer sketch per open window (up to 2^hll_lg_k bytes each), the
#: leaderboard merge state a ranking pair per pending window: rare rooms and large leaderboards
#: pass 1 MiB, and a record the broker refuses stops the worker at every restart.
MAX_RECORD_BYTES = 8 * 1024 * 1024
LARGE_RECORDS = {"max.message.bytes": str(MAX_RECORD_BYTES)}
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
    **LARGE_RECORDS,
}


#: live.room-sessions holds the latest record of each session (key <room_id>:<session_start>)
SESSIONS_CONFIG = {"cleanup.policy": "compact"}


def session_and_rollup_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """The session topic (compacted) and one room-stats topic per rollup length, with their configs."""
    t = settings.topics
    topics = {t.room_sessions: SESSIONS_CONFIG}
    topics.update({t.rollup(length): {} for length in settings.core.rollup_windows_ms})
    return topics


async def partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``names``."""
    counts = {}
    for topic in await admin.describe_topics(names):
        if topic["error_code"] == 0:
            counts[topic["topic"]] = len(topic["partitions"])
        elif topic["error_code"] != UNKNOWN_TOPIC:
            raise TopologyError(f"cannot describe topic {topic['topic']!r}: error {topic['error_code']}")
    return counts


async def ensure_topology(admin: AIOKafkaAdminClient, settings: Settings) -> int:
    """Check (and, if configured, create) every topic; return the input partition count."""
    t = settings.topics
    counts = await partition_counts(admin, list(t.inputs))
    missing = [name for name in t.inputs if name not in counts]
    if missing and not settings.create_topics:
        raise TopologyError(f"input topics missing: {', '.join(missing)} (set LIVEPULSE_CREATE_TOPICS=true)")
    rf = settings.replication_factor
    isr = {"min.insync.replicas": str(settings.min_insync_replicas)}
    if missing:
        partitions = next(iter(counts.values()), settings.partitions)
        await _create(admin, [NewTopic(name, partitions, rf, topic_configs=isr) for name in missing])
        counts.update(dict.fromkeys(missing, partitions))
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name}={counts[name]}" for name in t.inputs)
        raise TopologyError(f"input topics are not co-partitioned: {listed}")
    partitions = counts[t.viewer]

    internal: dict[str, dict[str, str]] = {t.repartition: {}, t.changelog: CHANGELOG_CONFIG}
    outputs: dict[str, dict[str, str]] = {t.room_stats: {}, t.alerts: {}, t.dlq: {}}
    outputs.update(session_and_rollup_topics(settings))
    if t.control not in await partition_counts(admin, [t.control]):
        # one partition: overrides apply in order
        await _create(admin, [NewTopic(t.control, 1, rf, topic_configs=isr)])
    existing = await partition_counts(admin, [*internal, *outputs])
    # Task p writes its room-stats, dead letters and changelog to partition p and reads repartition p.
    for name in [*internal, *outputs]:
        if name in existing and existing[name] != partitions:
            raise TopologyError(
                f"topic {name} has {existing[name]} partitions but the inputs have {partitions}: "
                f"recreate it with {partitions} partitions (or point the setting at another topic)"
            )
    if t.changelog in existing:
        policy = await _topic_config(admin, t.changelog, "cleanup.policy")
        if "compact" not in (policy or "").split(","):
            raise TopologyError(
                f"changelog topic {t.changelog} has cleanup.policy={policy}; it must be compacted: "
                f"kafka-configs --alter --entity-type topics --entity-name {t.changelog} "
                "--add-config cleanup.policy=compact"
            )
    to_create = [
        NewTopic(name, partitions, rf, topic_configs={**isr, **configs})
        for name, configs in {**internal, **outputs}.items()
        if name not in existing
    ]
    to_create += await _single_partition_topics(
        admin, [t.leaderboard_partials, t.leaderboard], rf, {**isr, **LARGE_RECORDS}
    )
    created = {nt.name for nt in to_create}
    for name in (t.changelog, t.leaderboard_partials, t.leaderboard):
        if name not in created:
            await _warn_small_records(admin, name)
    if to_create:
        if not settings.create_topics:
            names = ", ".join(nt.name for nt in to_create)
            raise TopologyError(f"topics missing: {names} (create them or set LIVEPULSE_CREATE_TOPICS=true)")
        await _create(admin, to_create)
    return partitions


async def _single_partition_topics(
    admin: AIOKafkaAdminClient, names: list[str], rf: int, isr: dict[str, str]
) -> list[NewTopic]:
    """The leaderboard's topics: one partition each (one merge, one ordered output); the missing
    ones to create."""
    existing = await partition_counts(admin, names)
    for name, count in existing.items():
        if count != 1:
            raise TopologyError(
                f"topic {name} has {count} partitions; the leaderboard needs exactly 1: recreate it "
                "(or point the setting at another topic)"
            )
    return [NewTopic(name, 1, rf, topic_configs=isr) for name in names if name not in existing]


async def _warn_small_records(admin: AIOKafkaAdminClient, topic: str) -> None:
    """Warn if an existing state topic takes smaller records than livepulse may write to it."""
    limit = await _topic_config(admin, topic, "max.message.bytes")
    if limit is not None and limit.isdigit() and int(limit) < MAX_RECORD_BYTES:
        log.warning(
            "topic %s takes records of at most %s bytes; livepulse may write up to %d (a room with "
            "many open windows of large sketches, a large leaderboard), and a refused record stops "
            "the worker: kafka-configs --alter --entity-type topics --entity-name %s "
            "--add-config max.message.bytes=%d",
            topic,
            limit,
            MAX_RECORD_BYTES,
            topic,
            MAX_RECORD_BYTES,
        )


async def _topic_config(admin: AIOKafkaAdminClient, topic: str, name: str) -> str | None:
    """One configuration value of a topic, as the broker reports it."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})])
    for response in responses:
        for resource in response.resources:
            error_code, _, _, _, entries = resource[:5]
            if error_code:
                raise TopologyError(f"cannot describe the configuration of {topic}: error {error_code}")
            for entry in entries:
                if entry[0] == name:
                    return str(entry[1]) if entry[1] is not None else None
    return None


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    log.info("creating topics %s", ", ".join(f"{nt.name}({nt.num_partitions})" for nt in topics))
    response = await admin.create_topics(topics)
    for name, code, *_ in response.topic_errors:
        if code not in (0, 36):  # 36: already exists (a concurrent worker won the race)
            raise TopologyError(f"cannot create topic {name!r}: error {code}")
    names = [nt.name for nt in topics]
    for _ in range(100):  # metadata propagates asynchronously
        if len(await partition_counts(admin, names)) == len(names):
            return
        await asyncio.sleep(0.1)
    raise TopologyError(f"topics {names} not visible after creation")


class BrokerWait:
    """Backoff (0.25 s, doubling up to 5 s) while no broker answers, for up to
    ``settings.broker_wait_ms`` from its creation: one budget for every step of a start."""

    def __init__(self, settings: Settings) -> None:
        self.brokers = settings.brokers
        self.budget_ms = settings.broker_wait_ms
        self.deadline = time.monotonic() + settings.broker_wait_ms / 1000
        self.delay = 0.25

    def left(self) -> float:
        """Seconds of the budget left (0 once spent)."""
        return max(0.0, self.deadline - time.monotonic())

    async def pause(self, why: object) -> bool:
        """Sleep before the next try and return True, or return False when the budget is spent."""
        left = self.left()
        if not left:
            return False
        wait = min(self.delay, left)
        log.warning("waiting for the brokers %s (%s); next try in %.1f s", self.brokers, why, wait)
        await asyncio.sleep(wait)
        self.delay = min(2 * self.delay, 5.0)
        return True


async def check_credentials(settings: Settings, wait: BrokerWait | None = None) -> None:
    """Fail at start, naming the setting, when TLS or SASL is misconfigured.

    aiokafka's clients log a refused handshake and retry until "Unable to bootstrap": one direct
    connection to each bootstrap server surfaces the real reason. While no server answers at all
    (the brokers restarting) it retries under ``wait``; once that is spent the admin client's own
    wait reports the outage.
    """
    sec = settings.security
    if sec.security_protocol == "PLAINTEXT":
        return
    wait = wait or BrokerWait(settings)
    kwargs = sec.client_kwargs()
    while True:
        for host, port in settings.broker_addresses:
            server = f"{host}:{port}"
            # a server that takes the TCP connection but never answers the handshake must not
            # hold the start past the budget
            timeout = min(30.0, max(0.5, wait.left()))
            try:
                conn = await asyncio.wait_for(create_conn(host, port, **kwargs), timeout)
            except ssl.SSLCertVerificationError as exc:
                raise ConfigError(
                    f"the certificate of broker {server} is not trusted by LIVEPULSE_SSL_CAFILE="
                    f"{sec.ssl_cafile or '(system CAs)'}: {exc.verify_message or exc}"
                ) from None
            except SaslAuthenticationFailed as exc:
                raise ConfigError(
                    f"broker {server} refused the SASL {sec.sasl_mechanism} login of LIVEPULSE_SASL_USERNAME="
                    f"{sec.sasl_username}: check LIVEPULSE_SASL_PASSWORD ({exc.description or exc})"
                ) from None
            except (OSError, TimeoutError, KafkaError) as exc:
                log.warning("could not check the credentials against broker %s: %r", server, exc)
                if not wait.left():
                    return
                continue
            conn.close()
            return
        if not await wait.pause("no broker answered the credential check"):
            return


def check_codecs() -> None:
    """Refuse to start without the codecs producers compress with: a consumer that meets a batch
    it cannot decompress stops, at the first such batch, and again after every restart."""
    missing = [
        name
        for name, present in (("snappy", codec.has_snappy), ("lz4", codec.has_lz4), ("zstd", codec.has_zstd))
        if not present()
    ]
    if missing:
        raise ConfigError(
            f"this installation cannot decompress {', '.join(missing)} batches, which producers may send: "
            "install cramjam (pip install 'aiokafka[lz4,snappy,zstd]')"
        )


def prepare_topics(settings: Settings) -> int:
    """Check the codecs and the credentials, then check and create every topic before the worker
    starts (faust subscribes only to existing topics).

    Synchronous: call it before the faust worker's event loop runs.
    """

    check_codecs()

    async def run() -> int:
        wait = BrokerWait(settings)
        await check_credentials(settings, wait)
        admin = await connected_admin(settings, wait)
        try:
            return await ensure_topology(admin, settings)
        finally:
            await admin.close()

    return asyncio.run(run())


async def connected_admin(settings: Settings, wait: BrokerWait | None = None) -> AIOKafkaAdminClient:
    """An admin client bootstrapped from ``settings.brokers``, retried with backoff for up to
    ``broker_wait_ms``: a worker restarted while its brokers restart waits for them instead of
    exiting at once (and being restarted in a loop by its supervisor)."""
    wait = wait or BrokerWait(settings)
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers, **settings.security.client_kwargs())
        try:
            await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()
            if not await wait.pause(exc):
                raise InfrastructureError(
                    f"no broker of {settings.brokers} answered within LIVEPULSE_BROKER_WAIT_MS="
                    f"{wait.budget_ms}: {exc}"
                ) from None
