"""Window arithmetic: aligned tumbling windows built from fixed buckets."""

from __future__ import annotations


def window_start(ts_ms: int, window_ms: int) -> int:
    """Start of the aligned window ``[start, start + window_ms)`` that holds ``ts_ms``."""
    return ts_ms - ts_ms % window_ms


def bucket_range(start_ms: int, end_ms: int, bucket_ms: int) -> range:
    """Bucket numbers (``ts // bucket_ms``) covering ``[start_ms, end_ms)``."""
    return range(start_ms // bucket_ms, -(-end_ms // bucket_ms))
