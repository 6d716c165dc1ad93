"""Validation bounds, one frozen object passed to the decoders."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that make a message invalid.

    ``max_past_ms``/``max_future_ms`` bound event time against the caller's
    wall clock: far-future timestamps would drag the watermark forward and
    turn every honest event late, so the future bound is tight.
    """

    max_message_bytes: int = 8_192
    max_id_len: int = 128
    max_amount_minor: int = 100_000_000_00  # 100 M major units
    max_gift_count: int = 1_000_000
    max_past_ms: int = 7 * DAY_MS
    #: seconds, not minutes: the watermark follows event time, so this bounds how far it can run
    #: ahead of the wall clock (minus grace)
    max_future_ms: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_id_len", "max_amount_minor", "max_gift_count"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_past_ms < 0 or self.max_future_ms < 0:
            raise ValueError("skew bounds must be >= 0")


DEFAULT_LIMITS = Limits()
