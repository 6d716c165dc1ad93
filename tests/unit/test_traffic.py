"""The one traffic model (``loadtest.traffic``): seeded, decodable, the same whether cut in phases or
streamed, and independent of the scenarios it is given."""

from __future__ import annotations

import ast
import itertools
import os
from collections import Counter
from pathlib import Path

import pytest

from loadtest import scenarios, traffic
from loadtest.traffic import (
    GIFT,
    KIND_TABLE,
    ORDER,
    SOURCE_NAMES,
    VIEWER,
    VIEWER_KINDS,
    VIEWER_WEIGHTS,
    TrafficConfig,
    TrafficModel,
    encode,
)
from schemas import Invalid, decode_gift, decode_order, decode_viewer

START = 1_700_000_000_000
CONFIG = TrafficConfig(rooms=50, users=500, rate_per_s=1_000, disorder_share=0.2, disorder_ms=300)
DECODERS = {VIEWER: decode_viewer, ORDER: decode_order, GIFT: decode_gift}


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def payloads(seed: int) -> list[bytes]:
        return [m[3] for m in TrafficModel(CONFIG, seed=seed).phase(START, 20.0).messages]

    assert payloads(1) == payloads(1)
    assert payloads(1) != payloads(2)


def test_every_message_is_its_event_encoded_and_decodes_back() -> None:
    phase = TrafficModel(CONFIG, seed=4).phase(START, 30.0)
    assert {m[0] for m in phase.messages} == {VIEWER, ORDER, GIFT}
    for source, _, key, raw, ts, ev in phase.messages:
        assert ev is not None and raw == encode(ev) and ts == ev.ts and key == ev.room_id.encode()
        out = DECODERS[source](raw, ts)
        assert type(out) is not Invalid and out == ev and type(out) is type(ev)


def test_orders_go_through_their_lifecycle_and_clients_retry() -> None:
    phase = TrafficModel(CONFIG, seed=5).phase(START, 120.0)
    orders = [ev for source, *_, ev in phase.messages if source == ORDER]
    statuses = Counter(ev.status for ev in orders)  # type: ignore[union-attr]
    assert set(statuses) == {"created", "paid", "cancelled", "refunded"}
    assert statuses["created"] > statuses["paid"] > statuses["cancelled"] > statuses["refunded"]
    keys = [(ev.order_id, ev.status) for ev in orders]  # type: ignore[union-attr]
    assert len(keys) > len(set(keys))  # retried messages: the same order and status again


def test_streamed_ticks_are_the_phase_cut_short() -> None:
    phase = TrafficModel(CONFIG, seed=6).phase(START, 10.0)
    ticks = TrafficModel(CONFIG, seed=6).ticks(START, realtime=False)
    n_ticks = 10_000 // CONFIG.tick_ms
    streamed = [m for messages in itertools.islice(ticks, n_ticks) for m in messages]
    assert streamed == list(phase.messages)


def test_ticks_keep_order_follow_ups_across_ticks() -> None:
    ticks = TrafficModel(CONFIG, seed=7).ticks(START)
    messages = [m for messages in itertools.islice(ticks, 600) for m in messages]  # 60 s
    paid = [ev for source, *_, ev in messages if source == ORDER and ev.status == "paid"]  # type: ignore[union-attr]
    assert len(paid) > 20
    assert max(ts for *_, ts, _ in messages) < START + 60_000


def test_disorder_stays_within_its_bound() -> None:
    phase = TrafficModel(CONFIG, seed=8).phase(START, 20.0)
    newest = START
    behind = []
    for *_, ts, _ in phase.messages:
        behind.append(newest - ts)
        newest = max(newest, ts)
    # a retried message keeps its event time: it arrives up to the retry delay behind
    assert 0 < max(behind) <= max(CONFIG.disorder_ms, CONFIG.retry_delay_ms[1]) + CONFIG.tick_ms


def test_viewer_kinds_follow_the_one_weights_table() -> None:
    assert Counter(KIND_TABLE) == {
        kind: round(w * len(KIND_TABLE)) for kind, w in zip(VIEWER_KINDS, VIEWER_WEIGHTS, strict=True)
    }
    assert sum(VIEWER_WEIGHTS) == pytest.approx(1.0)
    assert (
        SOURCE_NAMES[VIEWER] == "viewer" and SOURCE_NAMES[ORDER] == "order" and SOURCE_NAMES[GIFT] == "gift"
    )


def test_the_model_does_not_import_the_scenarios() -> None:
    tree = ast.parse(Path(traffic.__file__).read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not any("scenarios" in name for name in imported)
    assert issubclass(scenarios.Trending, traffic.Scenario)


@pytest.mark.parametrize("spill_bytes", [None, 10_000], ids=["in-memory", "on-disk"])
def test_the_message_log_gives_back_every_message_as_generated(
    monkeypatch: pytest.MonkeyPatch, spill_bytes: int | None
) -> None:
    """The log keeps payloads and numbers, not events: iterating it reads each well-formed payload
    back into an event of the same type and fields as the one generated, and a malformed one into
    None; ``wire`` gives the same without events, ``events_of`` a partition's events. The same
    when it has moved to its file, read in blocks that end inside records."""
    if spill_bytes is not None:
        monkeypatch.setattr(traffic, "LOG_SPILL_BYTES", spill_bytes)
        monkeypatch.setattr(traffic, "_READ_BLOCK", 777)
    generated: list[traffic.Message] = []
    append = traffic.MessageLog.append

    def spy(log: traffic.MessageLog, message: traffic.Message) -> None:
        generated.append(message)
        append(log, message)

    monkeypatch.setattr(traffic.MessageLog, "append", spy)
    phase = TrafficModel(CONFIG, seed=9).phase(
        START, 60.0, scenarios.build(scenarios.NAMES, span_s=60.0, window_ms=1_000, grace_ms=500)
    )
    assert len(phase.messages) == len(generated) > 5_000 and sum(phase.malformed.values()) > 0
    assert phase.messages.spilled is (spill_bytes is not None)
    back = list(phase.messages)
    assert back == generated
    assert [type(m[5]) for m in back] == [type(m[5]) for m in generated]
    assert list(phase.messages.wire()) == [(*m[:5], m[5] is not None) for m in generated]
    for part in phase.messages.partitions():
        assert list(phase.messages.events_of(part)) == [
            (m[0], m[5]) for m in generated if m[1] == part and m[5] is not None
        ]
    phase.messages.clear()
    assert len(phase.messages) == 0 and list(phase.messages) == [] and not phase.messages.spilled
    phase.messages.append(generated[0])  # a cleared log takes messages again
    assert list(phase.messages.wire()) == [(*generated[0][:5], generated[0][5] is not None)]


def test_a_message_log_past_its_spill_size_holds_next_to_nothing_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live phase of the 100 000-room load test is 2 M messages: once past ``LOG_SPILL_BYTES`` the
    log's records are in its file, and memory holds at most that much of them."""
    import tracemalloc

    monkeypatch.setattr(traffic, "LOG_SPILL_BYTES", 64 * 1024)
    model = TrafficModel(CONFIG, seed=3)
    model.phase(START, 5.0)  # the model's own state (rooms, users, orders) grows at first
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        phase = model.phase(START + 5_000, 30.0)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(phase.messages) > 20_000 and phase.messages.spilled
    assert held < 64 * 1024 + 8 * len(phase.messages)  # ~130 bytes per message when held in memory
    assert sum(1 for _ in phase.messages.wire()) == len(phase.messages)


def test_generated_messages_are_held_in_their_own_size() -> None:
    """orjson 3.13 returns each dumps result in a 4 KB allocation, and an event object per message
    costs more than its payload: the generator keeps millions of messages, so the log keeps only
    their payloads and numbers (a 1.43 M-message backlog: 6.4 GB as dumps results, 650 MB as
    compact copies with their events, 193 MB now)."""
    import tracemalloc

    model = TrafficModel(CONFIG, seed=3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        phase = model.phase(
            START, 5.0, scenarios.build(["malformed"], span_s=5.0, window_ms=1_000, grace_ms=500)
        )
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(phase.messages) > 3_000 and sum(phase.malformed.values()) > 0
    assert held / len(phase.messages) < 250  # bytes per message, every object of it included (~125)


def test_a_message_log_read_while_messages_are_appended_gives_every_one() -> None:
    """As a list's iterator does: messages appended during a read are read too, whether they are
    still in memory or have moved to the file meanwhile."""
    phase = TrafficModel(CONFIG, seed=4).phase(START, 3.0)
    generated = list(phase.messages)
    log = traffic.MessageLog(spill_bytes=2_000)
    for message in generated[:50]:
        log.append(message)
    reader = log.wire()
    got = [next(reader)]
    for message in generated[50:200]:
        log.append(message)  # spills to the file several times while the reader is at message 1
    got += list(reader)
    assert log.spilled and got == [(*m[:5], m[5] is not None) for m in generated[:200]]


def test_a_message_log_shared_through_its_file_reads_the_same_elsewhere() -> None:
    """The live sender runs in a child process (``loadtest.sender``) and reads the phase's log
    through the file descriptor it inherits: every message, as the log gives them here."""
    phase = TrafficModel(CONFIG, seed=5).phase(START, 3.0)
    log = traffic.MessageLog(spill_bytes=50_000)
    for message in phase.messages:
        log.append(message)
    fd, size = log.shared_file()
    parts = {p: log.count_of(p) for p in log.partitions()}
    other = traffic.MessageLog.from_fd(os.dup(fd), size, parts)
    assert list(other.wire()) == list(log.wire()) and len(other) == len(log) > 1_000
    assert other.partitions() == log.partitions()
    log.append(next(iter(phase.messages)))  # the owner goes on; the shared size stays as it was
    assert len(list(other.wire())) == len(log) - 1
