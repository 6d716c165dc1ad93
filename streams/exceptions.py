"""The livepulse error tree.

Bad input is never an exception here: it becomes a dead-letter record. These
errors are for configuration and infrastructure; ``retriable`` says whether
the operation may succeed if simply tried again.
"""

from __future__ import annotations


class LivepulseError(Exception):
    """Root of every livepulse error."""

    retriable: bool = False


class ConfigError(LivepulseError):
    """Settings are inconsistent or missing; fix the configuration and restart."""


class StateError(LivepulseError):
    """A changelog record could not be decoded (corrupt, or from a newer version)."""


class TopologyError(LivepulseError):
    """Kafka topics are missing or not co-partitioned."""


class InfrastructureError(LivepulseError):
    """A dependency (broker, HTTP peer) failed in a way that may pass."""

    retriable = True


class FencedError(LivepulseError):
    """Another worker took over a task's transactional id: this process no longer owns the task."""
