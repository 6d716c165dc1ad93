"""Correctness of a load-test run: windows against the ground truth, spikes alerted, no unexplained alert.

* every room-stats window equals the oracle's, field by field, except
  ``unique_viewers`` which must be within the HyperLogLog bound; no window is
  missing, none is extra, a repeated key repeats the same record;
* every injected spike has a firing alert for its room, on one of the metrics
  it moves, starting within a window of the spike;
* every firing alert is explained: the detector replayed over the true windows
  raises it (organic alerts — a top room's warm-up surge, a big gift — are real
  and counted apart), or it is an injected spike's, or (unique viewers only)
  the replay over the worker's own windows raises it, the HLL estimate having
  crossed a threshold the exact count did not; and every alert the replay
  raises was raised;
* dead letters: exactly the malformed messages, with the expected reason codes;
* the platform leaderboard: one record per window with a live room, each equal to the oracle's
  (top N by GMV and by views, totals), none missing, none extra, none repeated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from schemas import ROOM_SESSION_FIELDS, ROOM_STATS_FIELDS, RoomSession, RoomStats

from ._collect import Outputs, WindowKey
from ._truth import AlertKey, Truth, detector_alerts
from .oracle import UniqueTally, expected_leaderboards, unique_viewers_close
from .traffic import Injection

_EXACT_FIELDS = tuple(f for f in ROOM_STATS_FIELDS if f not in ("unique_viewers", "orders_per_sec"))


@dataclass
class SpikeResult:
    injection: Injection
    #: first firing alert matching the spike (by arrival), if any
    alert: AlertKey | None = None
    arrival_s: float | None = None

    @property
    def start_offset_s(self) -> float | None:
        """Alert ``startsAt`` minus the spike's start (event time)."""
        return None if self.alert is None else (self.alert[3] - self.injection.start_ms) / 1000

    def delay_s(self, realtime: bool) -> float | None:
        """Wall-clock detection delay (arrival of the alert minus the spike's start), real time only."""
        if self.arrival_s is None or not realtime:
            return None
        return self.arrival_s - self.injection.start_ms / 1000


@dataclass
class Verdict:
    windows_expected: int = 0
    windows_got: int = 0
    missing: list[WindowKey] = field(default_factory=list)
    unexpected: list[WindowKey] = field(default_factory=list)
    mismatched: list[tuple[WindowKey, dict[str, tuple[Any, Any]]]] = field(default_factory=list)
    conflicts: int = 0
    duplicates: int = 0
    alert_records: int = 0
    alerts_firing: int = 0
    alerts_resolved: int = 0
    spikes: list[SpikeResult] = field(default_factory=list)
    organic: list[AlertKey] = field(default_factory=list)
    unexplained: list[AlertKey] = field(default_factory=list)
    not_raised: list[AlertKey] = field(default_factory=list)
    dlq_expected: Counter[str] = field(default_factory=Counter)
    dlq_got: Counter[str] = field(default_factory=Counter)
    late_expected: int = 0
    late_got: int = 0
    #: rollup windows and sessions compared (when the truth holds them)
    rollups_expected: int = 0
    sessions_expected: int = 0
    leaderboards_expected: int = 0
    leaderboards_got: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [
            f"windows: {self.windows_got:,} received, {self.windows_expected:,} expected, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} mismatched, "
            f"{self.conflicts} conflicting repeats, {self.duplicates} identical repeats",
            f"late events: {self.late_got} counted in windows, {self.late_expected} expected",
            f"alerts: {self.alert_records} records, {self.alerts_firing} distinct firing, "
            f"{self.alerts_resolved} resolved; spikes alerted {sum(s.alert is not None for s in self.spikes)}"
            f"/{len(self.spikes)}; organic {len(self.organic)}; unexplained {len(self.unexplained)}; "
            f"expected but not raised {len(self.not_raised)}",
            f"dead letters: {sum(self.dlq_got.values())} received, "
            f"{sum(self.dlq_expected.values())} expected",
            f"rollups and sessions: {self.rollups_expected:,} rollup windows and "
            f"{self.sessions_expected:,} sessions compared",
            f"leaderboard: {self.leaderboards_got} windows received, {self.leaderboards_expected} expected",
        ]
        lines += [f"FAIL: {f}" for f in self.failures]
        return "\n".join(lines)


def parse_iso_ms(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def check(
    truth: Truth,
    out: Outputs,
    *,
    require_alerts: bool = True,
    late_slack: bool = False,
    limit: int = 5,
    leaderboard_size: int = 100,
) -> Verdict:
    """Compare everything published with the truth.

    ``late_slack``: a late event is counted in the window where the watermark
    stood when it arrived; while the worker lags (a live phase near capacity)
    that can be a neighbouring window of the one the oracle picks from the
    production order. With slack, late counts are compared per room, and a
    window holding nothing but late counts may sit in another window; so may a
    rollup window, and a session whose first activity was a late event may
    start up to a window apart (``_excuse_late_session_start``).
    """
    v = Verdict()
    tally = UniqueTally()
    _check_windows(truth, out, v, limit, late_slack, tally)
    if truth.rollup_windows_ms:
        longer = compare_sessions_and_rollups(truth, out, late_slack=late_slack, tally=tally)
        v.rollups_expected, v.sessions_expected = longer.rollups_expected, longer.sessions_expected
        v.failures += longer.failures(limit)
    if (unique_failure := tally.failure()) is not None:
        v.failures.append(unique_failure)
    _check_alerts(truth, out, v, require_alerts, limit)
    want = expected_leaderboards(truth.windows.values(), leaderboard_size)
    v.leaderboards_expected, v.leaderboards_got = len(want), len(out.leaderboards)
    v.failures += leaderboard_failures(want, out, limit)
    v.dlq_expected, v.dlq_got = Counter(truth.malformed), Counter(out.dlq_reasons)
    if v.dlq_expected != v.dlq_got:
        v.failures.append(
            f"dead letters by reason differ: expected {dict(v.dlq_expected)}, got {dict(v.dlq_got)}"
        )
    if out.undecodable:
        v.failures.append(f"{out.undecodable} output records could not be decoded")
    # exactly once: a record read twice (read_committed) was committed twice
    repeats = {
        "windows": out.duplicates,
        "rollup windows": out.rollup_duplicates,
        "dead letters": out.dlq_duplicates,
    }
    if any(repeats.values()):
        v.failures.append(f"records published more than once: {repeats}")
    return v


def compare_leaderboards(
    want: dict[int, dict[str, Any]], out: Outputs
) -> tuple[list[int], list[int], list[int], int]:
    """Window starts missing, unexpected and different from the oracle; records published twice."""
    got = out.leaderboards
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    different = [ws for ws in sorted(set(want) & set(got)) if want[ws] != got[ws]]
    return missing, unexpected, different, len(out.leaderboard_repeats)


def leaderboard_failures(want: dict[int, dict[str, Any]], out: Outputs, limit: int = 5) -> list[str]:
    """Every expected leaderboard record published once and equal to the oracle's, nothing else."""
    got = out.leaderboards
    missing, unexpected, wrong, repeats = compare_leaderboards(want, out)
    failures = []
    if missing:
        failures.append(f"{len(missing)} leaderboard windows missing, e.g. {missing[:limit]}")
    if unexpected:
        failures.append(f"{len(unexpected)} leaderboard windows unexpected, e.g. {unexpected[:limit]}")
    for ws in wrong[:limit]:
        diff = {k: (want[ws].get(k), got[ws].get(k)) for k in want[ws].keys() | got[ws].keys()}
        diff = {k: pair for k, pair in diff.items() if pair[0] != pair[1]}
        failures.append(f"leaderboard window {ws} differs from the oracle: {str(diff)[:600]}")
    if len(wrong) > limit:
        failures.append(f"... {len(wrong)} leaderboard windows differ in all")
    if repeats:
        failures.append(f"{repeats} leaderboard records published more than once")
    return failures


def _late_only(s: RoomStats) -> bool:
    """A window that exists only to report late events (no activity of its own)."""
    return (
        s.late_events > 0
        and not (s.views or s.unique_viewers or s.likes or s.comments or s.shares or s.orders or s.gmv_minor)
        and not (s.refunds_minor or s.gifts or s.gift_value_minor)
    )


def _check_windows(
    truth: Truth, out: Outputs, v: Verdict, limit: int, late_slack: bool, tally: UniqueTally
) -> None:
    want, got = truth.windows, out.windows
    v.windows_expected, v.windows_got = len(want), len(got)
    v.conflicts, v.duplicates = len(out.conflicts), out.duplicates
    v.late_expected = sum(s.late_events for s in want.values())
    v.late_got = sum(s.late_events for s in got.values())
    v.missing, v.unexpected, v.mismatched = _compare(
        want, got, partial(_diff, tally=tally), late_slack, _late_only
    )
    if late_slack and (wrong := _late_totals_differ(want, got, lambda key: key[0])):
        v.failures.append(
            f"late events per room differ for {len(wrong)} rooms: {list(wrong.items())[:limit]}"
        )
    for label, items in (("missing", v.missing), ("unexpected", v.unexpected), ("mismatched", v.mismatched)):
        if items:
            v.failures.append(f"{len(items)} windows {label}, e.g. {items[:limit]}")
    if out.conflicts:
        v.failures.append(
            f"{len(out.conflicts)} windows published twice with different values: {out.conflicts[:2]}"
        )


@dataclass
class LongerWindows:
    """Rollups and sessions compared with the truth."""

    rollups_expected: int = 0
    sessions_expected: int = 0
    missing: list[Any] = field(default_factory=list)
    unexpected: list[Any] = field(default_factory=list)
    #: (key, {field: (expected, got)})
    wrong: list[tuple[Any, dict[str, tuple[Any, Any]]]] = field(default_factory=list)
    #: of ``wrong``: some count above the truth
    double_counted: int = 0
    conflicts: int = 0
    #: with late slack: (length, room) of rollups and room of sessions -> late events (expected, got)
    late_wrong: dict[Any, tuple[int, int]] = field(default_factory=dict)

    def failures(self, limit: int = 5) -> list[str]:
        out = [
            f"{len(items)} rollups/sessions {label} (of {self.rollups_expected} rollups, "
            f"{self.sessions_expected} sessions), e.g. {items[:limit]}"
            for label, items in (
                ("missing", self.missing),
                ("unexpected", self.unexpected),
                ("wrong", self.wrong),
            )
            if items
        ]
        if self.conflicts:
            out.append(f"{self.conflicts} rollup windows published twice with different values")
        if self.late_wrong:
            out.append(
                f"late events of rollups and sessions differ for {len(self.late_wrong)} rooms, e.g. "
                f"{list(self.late_wrong.items())[:limit]}"
            )
        return out


#: (expected, got) -> {field: (expected, got)} for the fields that differ
_Differ = Callable[[Any, Any], dict[str, tuple[Any, Any]]]
T = TypeVar("T")
K = TypeVar("K")


def compare_sessions_and_rollups(
    truth: Truth,
    out: Outputs,
    *,
    skip_room: Callable[[str], bool] = lambda room: False,
    late_slack: bool = False,
    tally: UniqueTally | None = None,
) -> LongerWindows:
    """Every closed rollup window and the latest record of every session against the truth, field by
    field (unique viewers within the HLL bound). Rooms for which ``skip_room`` is true are left out."""
    res = LongerWindows(conflicts=len(out.rollup_conflicts))
    want_r = _without(truth.rollups, lambda k: skip_room(k[1]))
    got_r = _without(out.rollups, lambda k: skip_room(k[1]))
    want_s = _without(truth.sessions, lambda k: skip_room(k[0]))
    got_s = _without(out.sessions, lambda k: skip_room(k[0]))
    res.rollups_expected, res.sessions_expected = len(want_r), len(want_s)
    compared = (
        _compare(want_r, got_r, partial(_diff, tally=tally), late_slack, _late_only),
        _compare(want_s, got_s, partial(_session_diff, tally=tally), late_slack, lambda s: False),
    )
    for missing, unexpected, wrong in compared:
        res.missing += missing
        res.unexpected += unexpected
        res.wrong += wrong
        res.double_counted += sum(
            any(isinstance(w, int) and isinstance(h, int) and h > w for w, h in diff.values())
            for _, diff in wrong
        )
    if late_slack:
        _excuse_late_session_start(res, want_s, got_s, truth.window_ms)
        # a late event may sit in a neighbouring rollup window or session, but in the same room
        res.late_wrong = _late_totals_differ(want_r, got_r, lambda key: key[:2])
        res.late_wrong |= _late_totals_differ(want_s, got_s, lambda key: key[0])
    return res


def _late_totals_differ(
    want: Mapping[K, Any], got: Mapping[K, Any], group: Callable[[K], Any]
) -> dict[Any, tuple[int, int]]:
    """Late events summed per ``group`` of keys, where the truth's and the output's differ."""
    totals: tuple[Counter[Any], Counter[Any]] = (Counter(), Counter())
    for records, counts in zip((want, got), totals, strict=True):
        for key, record in records.items():
            counts[group(key)] += record.late_events
    expected, counted = totals
    return {g: (expected[g], counted[g]) for g in expected | counted if expected[g] != counted[g]}


def _without(records: Mapping[K, T], skip: Callable[[K], bool]) -> Mapping[K, T]:
    """``records`` without the keys ``skip`` picks: the mapping itself when it picks none (the load
    test's records are packed, and a copy would read every one of them back)."""
    if not any(skip(key) for key in records):
        return records
    return {key: record for key, record in records.items() if not skip(key)}


def _compare(
    want: Mapping[Any, T],
    got: Mapping[Any, T],
    differ: _Differ,
    late_slack: bool,
    late_only: Callable[[T], bool],
) -> tuple[list[Any], list[Any], list[tuple[Any, dict[str, tuple[Any, Any]]]]]:
    """Keys missing, keys unexpected, and ``(key, {field: (expected, got)})`` for records that
    differ. With ``late_slack`` (see ``check``) late counts are not compared per record, and a
    record holding nothing but late counts (``late_only``) may be missing or extra."""
    missing: list[Any] = []
    wrong: list[tuple[Any, dict[str, tuple[Any, Any]]]] = []
    for key, expected in want.items():
        have = got.get(key)
        if have is None:
            if not (late_slack and late_only(expected)):
                missing.append(key)
            continue
        diff = differ(expected, have)
        if late_slack:
            diff.pop("late_events", None)
        if diff:
            wrong.append((key, diff))
    unexpected = [key for key, s in got.items() if key not in want and not (late_slack and late_only(s))]
    return missing, unexpected, wrong


def _excuse_late_session_start(
    res: LongerWindows,
    want_s: Mapping[Any, RoomSession],
    got_s: Mapping[Any, RoomSession],
    window_ms: int,
) -> None:
    """With late slack (see ``check``): a late event counts in the bucket of the watermark when it
    arrived, so a session whose first activity was a late event may start less than a window from
    the truth's. Such a session is matched to the truth's session of its room and compared without
    its start and late count."""
    extra = [k for k in res.unexpected if k in got_s]
    for key in [k for k in res.missing if k in want_s]:
        room, start = key
        near = [k for k in extra if k[0] == room and abs(k[1] - start) < window_ms]
        if len(near) != 1:
            continue
        diff = _session_diff(want_s[key], got_s[near[0]])
        diff.pop("session_start", None)
        diff.pop("late_events", None)
        if not diff:
            res.missing.remove(key)
            res.unexpected.remove(near[0])
            extra.remove(near[0])


_SESSION_EXACT = tuple(f for f in ROOM_SESSION_FIELDS if f != "unique_viewers")


def _session_diff(
    want: RoomSession, have: RoomSession, tally: UniqueTally | None = None
) -> dict[str, tuple[Any, Any]]:
    diff = {
        f: (getattr(want, f), getattr(have, f))
        for f in _SESSION_EXACT
        if getattr(want, f) != getattr(have, f)
    }
    close = unique_viewers_close if tally is None else tally.close
    if not close(have.unique_viewers, want.unique_viewers):
        diff["unique_viewers"] = (want.unique_viewers, have.unique_viewers)
    return diff


def _diff(want: RoomStats, have: RoomStats, tally: UniqueTally | None = None) -> dict[str, tuple[Any, Any]]:
    diff = {
        f: (getattr(want, f), getattr(have, f)) for f in _EXACT_FIELDS if getattr(want, f) != getattr(have, f)
    }
    if abs(want.orders_per_sec - have.orders_per_sec) > 1e-9:
        diff["orders_per_sec"] = (want.orders_per_sec, have.orders_per_sec)
    close = unique_viewers_close if tally is None else tally.close
    if not close(have.unique_viewers, want.unique_viewers):
        diff["unique_viewers"] = (want.unique_viewers, have.unique_viewers)
    return diff


def alert_keys(out: Outputs) -> tuple[dict[AlertKey, float], int, list[str]]:
    """Distinct firing alerts with their first arrival; resolved count; shape problems."""
    firing: dict[AlertKey, float] = {}
    resolved = 0
    problems: list[str] = []
    for arrival, rec in out.alerts:
        try:
            labels = rec["labels"]
            key = (labels["room_id"], labels["alertname"], labels["metric"], parse_iso_ms(rec["startsAt"]))
            status = rec["status"]
            if status not in ("firing", "resolved") or not labels.get("severity"):
                raise ValueError(f"status {status!r}, severity {labels.get('severity')!r}")
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{exc!r} in {rec}")
            continue
        if status == "firing":
            firing.setdefault(key, arrival)
        else:
            resolved += 1
    return firing, resolved, problems


def _matches(inj: Injection, key: AlertKey, window_ms: int) -> bool:
    room, _name, metric, starts_ms = key
    return (
        room == inj.room_id
        and metric in inj.metrics
        and inj.start_ms - window_ms <= starts_ms <= inj.end_ms + 3 * window_ms
    )


def _check_alerts(truth: Truth, out: Outputs, v: Verdict, require: bool, limit: int) -> None:
    firing, v.alerts_resolved, problems = alert_keys(out)
    v.alert_records, v.alerts_firing = len(out.alerts), len(firing)
    if problems:
        v.failures.append(f"{len(problems)} alert records malformed, e.g. {problems[:2]}")
    if not out.alerts:
        if require:
            v.failures.append("no alert on the alerts topic (spike alerts absent)")
        v.spikes = [SpikeResult(inj) for inj in truth.injections]
        return
    w = truth.window_ms
    for inj in truth.injections:
        hits = sorted((arrival, key) for key, arrival in firing.items() if _matches(inj, key, w))
        result = SpikeResult(inj)
        if hits:
            result.arrival_s, result.alert = hits[0]
        else:
            v.failures.append(f"injected {inj.scenario} in {inj.room_id} was not alerted")
        v.spikes.append(result)
    expected, possible = truth.expected_alerts(), truth.possible_alerts()
    injected = {key for key in firing if any(_matches(inj, key, w) for inj in truth.injections)}
    doubtful = [key for key in firing if key not in possible and key not in injected]
    v.not_raised = [key for key in expected if key not in firing]
    hll_rooms = {key[0] for key in doubtful + v.not_raised if key[2] == "unique_viewers"}
    replay = detector_alerts(
        _room_windows(out.windows.values(), hll_rooms), truth.window_ms, truth.surge_from
    )
    v.unexplained = [k for k in doubtful if not (k[2] == "unique_viewers" and k in replay)]
    v.not_raised = [k for k in v.not_raised if not (k[2] == "unique_viewers" and k not in replay)]
    v.organic = [key for key in firing if key in possible and key not in injected]
    if v.unexplained:
        v.failures.append(f"{len(v.unexplained)} unexplained alerts, e.g. {v.unexplained[:limit]}")
    if v.not_raised:
        v.failures.append(
            f"{len(v.not_raised)} alerts the true windows call for were not raised: {v.not_raised[:limit]}"
        )


def _room_windows(windows: Iterable[RoomStats], rooms: set[str]) -> list[RoomStats]:
    return [s for s in windows if s.room_id in rooms] if rooms else []
