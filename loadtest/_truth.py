"""Ground truth of a generated load: expected room-stats windows and alerts, and its JSON file.

Windows come from the brute-force oracle (``loadtest.oracle``) run per
partition, in production order, because the worker keeps one watermark per
partition number; a large partition in several replays, each over a share of
its rooms (``compute``). Expected alerts are the spike detector of ``streams.core``
replayed over those windows: what the worker must raise if its windows are
right. Injected spikes are checked separately, against their known room and
time (``loadtest._checks``).
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from schemas import ROOM_STATS_FIELDS, Event, RoomSession, RoomStats

from ._packed import PackedRecords
from .oracle import expected_all, expected_windows
from .traffic import Injection, Phase, no_gc

WindowKey = tuple[str, int]
#: messages of one partition the oracle replays at once (see ``compute``)
EVENTS_PER_REPLAY = 200_000
#: (room_id, alertname, metric, startsAt ms)
AlertKey = tuple[str, str, str, int]


@dataclass
class Truth:
    """What the worker must produce for the generated phases."""

    window_ms: int
    grace_ms: int
    partitions: int
    windows: MutableMapping[WindowKey, RoomStats]
    injections: list[Injection]
    malformed: Counter[str]
    events: int
    messages: int
    late_events: int
    phases: list[dict[str, Any]] = field(default_factory=list)
    _alerts: set[AlertKey] | None = None
    #: rollup lengths the truth was computed for (none: rollups and sessions not computed)
    rollup_windows_ms: tuple[int, ...] = ()
    #: closed rollup windows by (length, room_id, window_start)
    rollups: MutableMapping[tuple[int, str, int], RoomStats] = field(default_factory=dict)
    #: the latest record of every session by (room_id, session_start), as of the stream's watermark
    sessions: MutableMapping[tuple[str, int], RoomSession] = field(default_factory=dict)
    #: the windows a task's state can begin in (``TaskAggregator.watch_start``: the latest of its
    #: inputs' first windows): any partition's inputs' first windows, since inputs deliver in any
    #: order and re-routed events (producers without murmur2) reach a task through other partitions
    starts: tuple[int, ...] = ()
    #: alerts the worker may raise beyond ``expected_alerts`` (which start above decides)
    _possible: set[AlertKey] = field(default_factory=set)

    def expected_alerts(self) -> set[AlertKey]:
        """Firing alerts the detector raises over the true windows, whichever of ``starts`` the
        worker's tasks began at (computed once)."""
        if self._alerts is None:
            with no_gc():
                self._alerts, self._possible = self._detect()
        return self._alerts

    def possible_alerts(self) -> set[AlertKey]:
        """``expected_alerts`` and those raised only for some of the ``starts``."""
        return self.expected_alerts() | self._possible

    @property
    def surge_from(self) -> int | None:
        """The detector's ``surge_from`` for a task that began at the earliest possible start."""
        return self.starts[0] + 2 * self.window_ms if self.starts else None

    def _detect(self) -> tuple[set[AlertKey], set[AlertKey]]:
        # A room whose first window falls between the earliest and latest possible starts (two
        # windows on) surges under some of them only: it is replayed under each.
        first: dict[str, int] = {}
        for room_id, ws in self.windows:
            if ws < first.get(room_id, ws + 1):
                first[room_id] = ws
        w2, starts = 2 * self.window_ms, self.starts
        ambiguous = set()
        if len(starts) > 1:
            ambiguous = {room_id for room_id, ws in first.items() if starts[0] + w2 <= ws < starts[-1] + w2}
        windows = self.windows
        clear = (windows[key] for key in windows if key[0] not in ambiguous)
        must = detector_alerts(clear, self.window_ms, self.surge_from)
        series: dict[str, list[RoomStats]] = defaultdict(list)
        for key in windows if ambiguous else ():
            if key[0] in ambiguous:
                series[key[0]].append(windows[key])
        possible: set[AlertKey] = set()
        for room_id in ambiguous:
            variants = [detector_alerts(series[room_id], self.window_ms, start + w2) for start in starts]
            always = variants[0].intersection(*variants[1:])
            must |= always
            possible |= variants[0].union(*variants[1:]) - always
        return must, possible


def compute(
    phases: Sequence[Phase],
    *,
    partitions: int,
    window_ms: int,
    grace_ms: int,
    rollup_windows_ms: tuple[int, ...] = (),
    session_gap_ms: int = 1_800_000,
    bucket_ms: int = 1_000,
    events_per_replay: int | None = None,
) -> Truth:
    """Run the oracle per partition over every phase's events, in production order.

    With ``rollup_windows_ms``, also the rollup windows of those lengths and the sessions. A
    partition of more than ``events_per_replay`` messages (default ``EVENTS_PER_REPLAY``) is
    replayed several times, each time for a share of its rooms (by the CRC-32 of the message key,
    the room id), so the oracle holds only that share's events as objects.
    """
    with no_gc():
        return _compute(
            phases,
            partitions=partitions,
            window_ms=window_ms,
            grace_ms=grace_ms,
            rollup_windows_ms=rollup_windows_ms,
            session_gap_ms=session_gap_ms,
            bucket_ms=bucket_ms,
            events_per_replay=EVENTS_PER_REPLAY if events_per_replay is None else events_per_replay,
        )


class _Replay:
    """One partition's ``(source, offset, event)`` in production order, for one replay of the
    oracle over a share of its rooms: the events of those rooms, and the event times of the
    others (they move the watermark only; ``loadtest.oracle._classify``). Held in columns, and
    events only for the rooms replayed: a partition of a full load test is ~800 000 events, ~300
    MB as objects."""

    def __init__(self, phases: Sequence[Phase], part: int, share: int, shares: int) -> None:
        self.sources = array("b")
        self.offsets = array("q")
        self.times = array("q")
        self.replayed = array("b")  # 1: an event of the share, in ``events``
        self.events: list[Event] = []
        #: source -> the event time of its first event in the partition (every event counts)
        self.first_ts: dict[int, int] = {}
        keep = None if shares == 1 else (lambda key: zlib.crc32(key) % shares == share)
        offsets = [0, 0, 0]
        for phase in phases:
            for source, ev in phase.messages.events_of(part, keep):
                offsets[source] += 1
                self.sources.append(source)
                if source not in self.first_ts:
                    self.first_ts[source] = ev if isinstance(ev, int) else ev.ts
                self.offsets.append(offsets[source])
                if isinstance(ev, int):
                    self.times.append(ev)
                    self.replayed.append(0)
                    continue
                # the share is picked by the message key: every message of a room must carry its id
                if shares > 1 and zlib.crc32(ev.room_id.encode()) % shares != share:
                    raise ValueError(f"a message of room {ev.room_id!r} keyed by another room")
                self.times.append(ev.ts)
                self.replayed.append(1)
                self.events.append(ev)

    def __len__(self) -> int:
        return len(self.sources)

    def __contains__(self, item: object) -> bool:
        return any(item == row for row in self)

    def __iter__(self) -> Iterator[tuple[int, int, Event | int]]:
        events = iter(self.events)
        for source, offset, ts, replayed in zip(
            self.sources, self.offsets, self.times, self.replayed, strict=True
        ):
            yield source, offset, next(events) if replayed else ts


def _compute(
    phases: Sequence[Phase],
    *,
    partitions: int,
    window_ms: int,
    grace_ms: int,
    rollup_windows_ms: tuple[int, ...],
    session_gap_ms: int,
    bucket_ms: int,
    events_per_replay: int,
) -> Truth:
    # packed (``loadtest._packed``): the truth of a full load test is millions of records
    windows: PackedRecords[WindowKey, RoomStats] = PackedRecords(RoomStats)
    rollups: PackedRecords[tuple[int, str, int], RoomStats] = PackedRecords(RoomStats)
    sessions: PackedRecords[tuple[str, int], RoomSession] = PackedRecords(RoomSession)
    sources = (0, 1, 2)
    starts: set[int] = set()
    for part in sorted(set().union(*(phase.messages.partitions() for phase in phases))):
        messages = sum(phase.messages.count_of(part) for phase in phases)
        shares = max(1, -(-messages // events_per_replay))
        for share in range(shares):
            replay = _Replay(phases, part, share, shares)
            if share == 0:  # each input's first window in this partition
                starts.update(ts - ts % window_ms for ts in replay.first_ts.values())
            if rollup_windows_ms:
                got_windows, got_rollups, got_sessions = expected_all(
                    replay,
                    window_ms=window_ms,
                    grace_ms=grace_ms,
                    bucket_ms=bucket_ms,
                    gap_ms=session_gap_ms,
                    lengths_ms=rollup_windows_ms,
                    sources=sources,
                )
                rollups.update(got_rollups)
                sessions.update(got_sessions)
                del got_rollups, got_sessions
            else:
                got_windows = expected_windows(
                    replay, window_ms=window_ms, grace_ms=grace_ms, sources=sources
                )
            windows.update(got_windows)
            del replay, got_windows
    malformed: Counter[str] = Counter()
    for phase in phases:
        malformed.update(phase.malformed)
    return Truth(
        window_ms=window_ms,
        grace_ms=grace_ms,
        partitions=partitions,
        windows=windows,
        injections=[inj for phase in phases for inj in phase.injections],
        malformed=malformed,
        events=sum(phase.events for phase in phases),
        messages=sum(len(phase.messages) for phase in phases),
        late_events=sum(phase.late_events for phase in phases),
        rollup_windows_ms=rollup_windows_ms,
        rollups=rollups,
        sessions=sessions,
        starts=tuple(sorted(starts)),
        phases=[
            {
                "start_ms": p.start_ms,
                "end_ms": p.end_ms,
                "realtime": p.realtime,
                "messages": len(p.messages),
                "events": p.events,
                "late_events": p.late_events,
                "malformed": dict(p.malformed),
            }
            for p in phases
        ],
    )


def detector_alerts(
    windows: Iterable[RoomStats], window_ms: int, surge_from: int | None = None
) -> set[AlertKey]:
    """Replay the worker's spike detector (default rules) room by room; the firing transitions.

    ``surge_from`` as in ``streams.core.observe`` (None: the surge rule always)."""
    from streams.core import DEFAULT_RULES, DetectorState, observe, rules_for

    by_room: dict[str, list[RoomStats]] = defaultdict(list)
    for stats in windows:
        by_room[stats.room_id].append(stats)
    out: set[AlertKey] = set()
    for room_id, series in by_room.items():
        state = DetectorState(room_id)
        rules = rules_for(DEFAULT_RULES, room_id)
        for stats in sorted(series, key=lambda s: s.window_start):
            for ev in observe(state, stats, rules, window_ms, surge_from=surge_from):
                if ev.status == "firing":
                    out.add((ev.room_id, ev.alertname, ev.metric, ev.starts_at_ms))
    return out


def write(truth: Truth, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """The truth as JSON (gzip when ``path`` ends in .gz): windows as rows in ROOM_STATS_FIELDS order."""
    doc = {
        "version": 1,
        "window_ms": truth.window_ms,
        "grace_ms": truth.grace_ms,
        "partitions": truth.partitions,
        "events": truth.events,
        "messages": truth.messages,
        "late_events": truth.late_events,
        "malformed": dict(truth.malformed),
        "phases": truth.phases,
        "injections": [dataclasses.asdict(inj) for inj in truth.injections],
        "expected_alerts": sorted(truth.expected_alerts()),
        "possible_alerts": sorted(truth.possible_alerts() - truth.expected_alerts()),
        "starts": list(truth.starts),
        "fields": list(ROOM_STATS_FIELDS),
        "windows": [dataclasses.astuple(s) for _, s in sorted(truth.windows.items())],
        **(extra or {}),
    }
    raw = orjson.dumps(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, 3) if path.suffix == ".gz" else raw)


def read(path: Path) -> Truth:
    raw = path.read_bytes()
    doc = orjson.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    fields = doc["fields"]
    windows: PackedRecords[WindowKey, RoomStats] = PackedRecords(RoomStats)
    for row in doc["windows"]:
        stats = RoomStats(**dict(zip(fields, row, strict=True)))
        windows[(stats.room_id, stats.window_start)] = stats
    truth = Truth(
        window_ms=doc["window_ms"],
        grace_ms=doc["grace_ms"],
        partitions=doc["partitions"],
        windows=windows,
        injections=[Injection(**{**i, "metrics": tuple(i["metrics"])}) for i in doc["injections"]],
        malformed=Counter(doc["malformed"]),
        events=doc["events"],
        messages=doc["messages"],
        late_events=doc["late_events"],
        phases=doc["phases"],
    )
    truth._alerts = {(a[0], a[1], a[2], a[3]) for a in doc["expected_alerts"]}
    truth._possible = {(a[0], a[1], a[2], a[3]) for a in doc.get("possible_alerts", ())}
    truth.starts = tuple(doc.get("starts", ()))
    return truth
