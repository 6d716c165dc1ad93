"""Frozen window and state settings for the aggregation core."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigError


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Window geometry, watermark and memory bounds of one task.

    ``window_ms`` must be a multiple of ``bucket_ms``; windows are aligned to
    multiples of ``window_ms`` since the epoch.
    """

    bucket_ms: int = 1_000
    window_ms: int = 10_000
    grace_ms: int = 2_000
    #: wall-clock silence after which a partition's watermark follows wall time
    idle_partition_ms: int = 2_000
    #: after an input was busy yet silent for idle_partition_ms (the broker unreachable: nothing
    #: fetched), the watermark stays where it was this long once it delivers or is caught up again,
    #: so events the producers buffered through the outage are not late when one producer
    #: reconnects later than another (librdkafka backs off up to 10 s by default); 0: no hold
    outage_hold_ms: int = 10_000
    #: a task's first event, while a task re-routing to it has never taken one (its markers say
    #: "idle"), holds the watermark this long: that task may be taking its first events too, and
    #: the ones it re-routes, with the marker that holds this task, come with its next checkpoint.
    #: The data plane sets it to twice the commit interval; 0: no hold
    first_event_hold_ms: int = 2_000
    #: the watermark never passes the wall clock (``now_ms`` given to ``apply`` and ``tick``) minus
    #: ``grace_ms`` plus this: a producer whose clock runs a few seconds fast (its events within
    #: ``max_future_ms``, so accepted) then cannot make honest events late. The data plane sets 0;
    #: None: event time alone moves it (replays and tests of the pure core, whose now_ms is no clock)
    max_watermark_lead_ms: int | None = None
    #: event-time silence after which a room is forgotten (after its last window; rooms are
    #: scanned every max(window_ms, room_idle_ms / 10) of event time)
    room_idle_ms: int = 300_000
    #: how long an (order_id, status) pair is remembered for dedup, in event time
    dedup_ttl_ms: int = 600_000
    #: cap on remembered order keys per room (oldest forgotten first)
    dedup_max_per_room: int = 100_000
    #: HyperLogLog log2(k); 12 gives ~1.6 % relative standard error, 16 (the most) ~0.4 %. A sketch
    #: takes up to 2^lg_k bytes (HLL_8), and a room's changelog record holds one per open window
    hll_lg_k: int = 12
    #: an input caught up with its log end whose newest event time trails the fastest other input
    #: by more than this stops holding the watermark back (its events then count late)
    max_input_lag_ms: int = 60_000
    #: an input whose newest event time runs ahead of the slowest input of its task (or the slowest
    #: frontier of the tasks re-routing to it) by more than this is not read until that is within
    #: half of it (watermark alignment: in a catch-up
    #: the small order and gift topics would otherwise run minutes ahead of the viewer topic, and
    #: every room would hold, and checkpoint, buckets for all of that); 0: inputs are never held
    #: back. Above ``max_future_ms`` plus the lag of a live input, so live traffic is never held.
    #: 120 s: at 30 s a fast catch-up (60 s of event time per second read) paused and resumed so
    #: often that it cost 5-9 % CPU at 2 000 rooms; 120 s cost nothing there and gained 8 % at 6 000.
    max_source_drift_ms: int = 120_000
    #: rooms one task keeps; an event that would open one more is dead-lettered (``room_cap``)
    max_rooms: int = 200_000
    #: whether rooms' broadcast sessions are kept and published (live.room-sessions)
    sessions: bool = True
    #: event-time silence that ends a room's broadcast session (at least one window)
    session_gap_ms: int = 1_800_000
    #: lengths of the rollup windows (room-stats over longer windows), each a multiple of window_ms
    rollup_windows_ms: tuple[int, ...] = (60_000, 3_600_000)
    #: quiet windows to the spike detector's native kernel where it is built (``streams/native``:
    #: the same baselines, bit for bit); false: the Python detector takes every window
    native_core: bool = True
    #: the rooms of each task in the native table (``streams/native/src/rooms.rs``,
    #: ``NativeTaskAggregator``: the per-room work natively, the same records); false: the rooms
    #: as Python objects (``TaskAggregator``), which the core's tests define
    native_rooms: bool = True
    #: the room state format checkpoints write (``_state_codec``): 6, a room's counters and what it
    #: folds from closed windows in two records; or 5, one record, which workers before 6 read too:
    #: the first step of a rolling upgrade from them (the RUNBOOK's "Upgrade across a state format")
    state_format: int = 6

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.window_ms <= 0:
            raise ConfigError("bucket_ms and window_ms must be positive")
        if self.window_ms % self.bucket_ms:
            raise ConfigError(f"window_ms {self.window_ms} is not a multiple of bucket_ms {self.bucket_ms}")
        if self.grace_ms < 0 or self.outage_hold_ms < 0 or self.first_event_hold_ms < 0:
            raise ConfigError("grace_ms, outage_hold_ms and first_event_hold_ms must be >= 0")
        if self.max_watermark_lead_ms is not None and self.max_watermark_lead_ms < 0:
            raise ConfigError("max_watermark_lead_ms must be >= 0 (or None)")
        if self.idle_partition_ms <= 0 or self.room_idle_ms <= 0:
            raise ConfigError("idle_partition_ms and room_idle_ms must be > 0")
        if self.dedup_ttl_ms < 0 or self.dedup_max_per_room <= 0:
            raise ConfigError("dedup_ttl_ms must be >= 0 and dedup_max_per_room > 0")
        if self.max_input_lag_ms <= 0 or self.max_rooms <= 0:
            raise ConfigError("max_input_lag_ms and max_rooms must be > 0")
        if self.max_source_drift_ms < 0:
            raise ConfigError("max_source_drift_ms must be >= 0")
        if self.session_gap_ms < self.window_ms:
            raise ConfigError(
                f"session_gap_ms {self.session_gap_ms} is shorter than window_ms {self.window_ms}"
            )
        for length in self.rollup_windows_ms:
            if length <= self.window_ms or length % self.window_ms:
                raise ConfigError(
                    f"rollup window {length} ms is not a multiple (> 1) of window_ms {self.window_ms}"
                )
        if len(set(self.rollup_windows_ms)) != len(self.rollup_windows_ms):
            raise ConfigError(f"rollup windows repeat: {self.rollup_windows_ms}")
        if self.state_format not in (5, 6):
            raise ConfigError(f"state_format {self.state_format} is not 5 or 6")
        if not 4 <= self.hll_lg_k <= 16:
            raise ConfigError("hll_lg_k must be in 4..16")

    @property
    def window_seconds(self) -> float:
        return self.window_ms / 1_000
