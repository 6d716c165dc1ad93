"""Seeded synthetic room-stats series with labeled spikes and decoys, to evaluate the spike detector.

Each room gets its own size (lognormal join rate, dwell time, conversion, gift
habit), a diurnal drift (24 h sine, random phase), overdispersed Poisson noise
(a gamma-distributed rate per window: counts are negative-binomial, burstier
than Poisson) and compound-lognormal money (GMV and gift value are sums of
per-order / per-gift amounts, so one big order makes a small room's GMV jump).

Injected on top, at known window indexes, in non-overlapping segments after a
history of ``history_windows``:

- ``spike``: one metric group multiplied by ``size`` for ``length`` windows
  (a step up and back down): what the detector must find;
- ``blip``: one window multiplied by a moderate ``size`` (2x by default): must not alert;
- ``ramp``: a slow rise to ``size`` x over ``length`` windows, a plateau, and a
  slow fall: must not alert.

Non-events built into the rooms' normal life, never labeled and never to
alert once seen: the diurnal drift, an **evening peak** (a Gaussian bump of
traffic and sales, up to ``evening_peak`` x more, centred at the room's local
20:00 with a 40-minute width; rooms' local clocks are spread over the day so
many 2-hour series cross their peak) and, in a ``p_flash`` share of rooms,
**flash-sale slots**: every hour at the same minute, sales (orders, hence GMV)
x ``flash_size`` for ``flash_windows`` windows. The first slot of a series is
news to the detector (it has not seen an hour yet); from the second on a slot
is the room's routine. Rooms with slots get no injection in the sales group.

Groups: ``traffic`` (views/s, unique viewers, concurrent viewers), ``sales``
(orders/s, GMV/s) and ``gifts`` (gift value/s); every metric of the group is a
labeled instance. Windows with no activity produce no record, as in the
aggregator. Per-room generators are seeded from ``(seed, room index)``, so
rooms can be generated in any order or in parallel with identical results.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from schemas import RoomStats

GROUPS: dict[str, tuple[str, ...]] = {
    "traffic": ("views_per_sec", "unique_viewers", "concurrent_viewers"),
    "sales": ("orders_per_sec", "gmv_per_sec"),
    "gifts": ("gift_value_per_sec",),
}
_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class SeriesConfig:
    """Shape of the synthetic population. Window indexes count from ``start_ms``."""

    rooms: int = 2_000
    windows: int = 720
    window_ms: int = 10_000
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    #: no injection before this window: the detector needs history to have a baseline
    history_windows: int = 60
    #: quiet windows kept after each injection ends, before the next one may start
    spacing_windows: int = 90
    spike_sizes: tuple[float, ...] = (2.0, 3.0, 5.0, 10.0, 20.0)
    spike_length: tuple[int, int] = (3, 15)
    blip_sizes: tuple[float, ...] = (2.0,)
    ramp_sizes: tuple[float, float] = (2.0, 4.0)
    ramp_length: tuple[int, int] = (60, 150)
    ramp_plateau: int = 30
    p_spike: float = 0.7
    p_blip: float = 0.4
    p_ramp: float = 0.4
    group_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    diurnal_amplitude: float = 0.5
    #: gamma shape of the per-window rate noise (coefficient of variation = 1/sqrt(shape))
    rate_noise_shape: float = 25.0
    #: per-window relative noise of concurrent viewers (AR(1) with coefficient 0.9)
    concurrent_noise: float = 0.03
    #: extra traffic and sales at the evening peak (x (1 + this) at its top)
    evening_peak: float = 1.5
    evening_peak_width_s: float = 2_400.0
    #: share of rooms with hourly flash-sale slots, their sales multiplier range and length
    p_flash: float = 0.3
    flash_size: tuple[float, float] = (3.0, 6.0)
    flash_windows: int = 30


@dataclass(frozen=True, slots=True)
class Injection:
    """A labeled event in one room: windows ``[start, start + length)`` (index from ``start_ms``)."""

    room_id: str
    kind: str
    group: str
    start: int
    length: int
    size: float
    #: expected pre-injection value of each metric of the group at ``start`` (no noise)
    base: dict[str, float] = field(hash=False)

    @property
    def metrics(self) -> tuple[str, ...]:
        return GROUPS[self.group]


@dataclass(frozen=True, slots=True)
class RoomSeries:
    room_id: str
    stats: list[RoomStats]
    injections: list[Injection]
    #: flash-sale slots, [start, end) window indexes, in time order (not labeled: routine)
    slots: list[tuple[int, int]] = field(default_factory=list)


def _place(rng: np.random.Generator, cfg: SeriesConfig, lengths: list[int]) -> list[int] | None:
    """Random non-overlapping starts for segments of the given lengths, in the given order."""
    free = cfg.windows - cfg.history_windows - sum(lengths) - cfg.spacing_windows * len(lengths)
    if free < 0:
        return None
    cuts = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    starts, pos, used = [], cfg.history_windows, 0
    for cut, length in zip(cuts, lengths, strict=True):
        pos += int(cut) - used
        used = int(cut)
        starts.append(pos)
        pos += length + cfg.spacing_windows
    return starts


def _injections(
    rng: np.random.Generator, cfg: SeriesConfig, room_id: str, flash: bool
) -> list[tuple[str, str, int, float]]:
    """(kind, group, length, size) of this room's injections, in time order."""
    plan: list[tuple[str, str, int, float]] = []
    groups = list(GROUPS)
    weights = np.asarray(cfg.group_weights) / sum(cfg.group_weights)
    if flash:  # sales have their routine slots: events go to the other groups
        weights = np.where(np.asarray(groups) == "sales", 0.0, weights)
        weights = weights / weights.sum()
    if rng.random() < cfg.p_spike:
        size = float(rng.choice(cfg.spike_sizes))
        length = int(rng.integers(cfg.spike_length[0], cfg.spike_length[1] + 1))
        plan.append(("spike", groups[rng.choice(3, p=weights)], length, size))
    if rng.random() < cfg.p_blip:
        plan.append(("blip", groups[rng.choice(3, p=weights)], 1, float(rng.choice(cfg.blip_sizes))))
    if rng.random() < cfg.p_ramp:
        size = float(rng.uniform(*cfg.ramp_sizes))
        length = int(rng.integers(cfg.ramp_length[0], cfg.ramp_length[1] + 1))
        plan.append(("ramp", groups[rng.choice(3, p=weights)], 2 * length + cfg.ramp_plateau, size))
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def _multiplier(kind: str, length: int, size: float, plateau: int) -> np.ndarray:
    if kind != "ramp":
        return np.full(length, size)
    up = (length - plateau) // 2
    rise = 1.0 + (size - 1.0) * np.arange(1, up + 1) / up
    return np.concatenate([rise, np.full(plateau, size), rise[::-1]])[:length]


def _compound(rng: np.random.Generator, counts: np.ndarray, median: float, sigma: float) -> np.ndarray:
    """Per-window sums of ``counts[i]`` lognormal amounts (integer minor units)."""
    total = int(counts.sum())
    amounts = np.rint(rng.lognormal(math.log(median), sigma, size=total)).astype(np.int64)
    sums = np.zeros(len(counts), dtype=np.int64)
    nonzero = counts > 0
    if total:
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums[nonzero] = np.add.reduceat(amounts, offsets[nonzero])
    return sums


def generate_room(seed: int, index: int, cfg: SeriesConfig) -> RoomSeries:
    """The series of one room; depends only on ``(seed, index, cfg)``."""
    rng = np.random.default_rng([seed, index])
    room_id = f"room-{index:06d}"
    n, window_s = cfg.windows, cfg.window_ms / 1_000
    join_rate = float(np.clip(rng.lognormal(math.log(1.5), 1.3), 0.02, 500.0))  # views/s
    dwell_s = float(rng.uniform(60, 600))
    unique_share = float(rng.uniform(0.2, 1.0))
    order_rate = join_rate * float(np.clip(rng.lognormal(math.log(0.05), 1.0), 0.001, 0.5))  # orders/s
    order_median, order_sigma = float(rng.uniform(2_000, 20_000)), 0.9
    gift_rate = join_rate * float(np.clip(rng.lognormal(math.log(0.1), 1.0), 0.001, 2.0))  # gifts/s
    gift_median, gift_sigma = float(rng.uniform(100, 1_000)), 1.2

    t_s = (cfg.start_ms / 1_000 + np.arange(n) * window_s) % _DAY_S
    phase = rng.uniform(0, 2 * math.pi)
    diurnal = 1.0 + cfg.diurnal_amplitude * np.sin(2 * math.pi * t_s / _DAY_S + phase)
    # The evening peak at the room's local 20:00; local clocks spread over the day.
    local_s = (t_s + rng.uniform(0, _DAY_S)) % _DAY_S
    to_peak = (local_s - 20 * 3_600 + _DAY_S / 2) % _DAY_S - _DAY_S / 2
    diurnal = diurnal * (1.0 + cfg.evening_peak * np.exp(-0.5 * (to_peak / cfg.evening_peak_width_s) ** 2))

    mult = {group: np.ones(n) for group in GROUPS}
    slots: list[tuple[int, int]] = []
    flash = bool(rng.random() < cfg.p_flash)
    if flash:
        hour = round(3_600 / window_s)
        minute = int(rng.integers(0, hour))
        size = float(rng.uniform(*cfg.flash_size))
        for start in range(minute, n, hour):
            end = min(n, start + cfg.flash_windows)
            mult["sales"][start:end] *= size
            slots.append((start, end))
    injections: list[Injection] = []
    plan = _injections(rng, cfg, room_id, flash)
    starts = _place(rng, cfg, [length for _, _, length, _ in plan]) or []
    expected = {
        "views_per_sec": join_rate,
        "unique_viewers": (unique_share * join_rate * dwell_s + join_rate * window_s),
        "concurrent_viewers": join_rate * dwell_s,
        "orders_per_sec": order_rate,
        "gmv_per_sec": order_rate * order_median * math.exp(order_sigma**2 / 2),
        "gift_value_per_sec": gift_rate * gift_median * math.exp(gift_sigma**2 / 2),
    }
    for (kind, group, length, size), start in zip(plan, starts, strict=False):
        mult[group][start : start + length] *= _multiplier(kind, length, size, cfg.ramp_plateau)
        base = {m: expected[m] * float(diurnal[start]) for m in GROUPS[group]}
        injections.append(Injection(room_id, kind, group, start, length, size, base))

    def noisy(rate: np.ndarray) -> np.ndarray:
        return rng.poisson(rate * rng.gamma(cfg.rate_noise_shape, 1 / cfg.rate_noise_shape, size=n))

    views = noisy(join_rate * window_s * diurnal * mult["traffic"])
    ar = np.zeros(n)
    shocks = rng.normal(0.0, cfg.concurrent_noise * math.sqrt(1 - 0.81), size=n)
    for i in range(1, n):
        ar[i] = 0.9 * ar[i - 1] + shocks[i]
    concurrent_level = join_rate * dwell_s * diurnal * mult["traffic"] * (1 + ar)
    concurrent = np.maximum(0, np.rint(rng.normal(concurrent_level, np.sqrt(concurrent_level)))).astype(int)
    unique = views + rng.poisson(unique_share * concurrent)
    orders = noisy(order_rate * window_s * diurnal * mult["sales"])
    gmv = _compound(rng, orders, order_median, order_sigma)
    gifts = noisy(gift_rate * window_s * diurnal * mult["gifts"])
    gift_value = _compound(rng, gifts, gift_median, gift_sigma)

    stats = []
    for i in np.flatnonzero(views + unique + orders + gifts).tolist():
        ws = cfg.start_ms + i * cfg.window_ms
        stats.append(
            RoomStats(
                room_id=room_id,
                window_start=ws,
                window_end=ws + cfg.window_ms,
                views=int(views[i]),
                unique_viewers=int(unique[i]),
                concurrent_viewers=int(concurrent[i]),
                likes=0,
                comments=0,
                orders=int(orders[i]),
                orders_per_sec=int(orders[i]) / window_s,
                gmv_minor=int(gmv[i]),
                refunds_minor=0,
                gifts=int(gifts[i]),
                gift_value_minor=int(gift_value[i]),
                late_events=0,
            )
        )
    return RoomSeries(room_id, stats, injections, slots)


def generate(seed: int, cfg: SeriesConfig) -> Iterator[RoomSeries]:
    for index in range(cfg.rooms):
        yield generate_room(seed, index, cfg)
