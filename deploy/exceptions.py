"""Errors raised by the local infrastructure helpers in ``deploy``."""

from streams.exceptions import LivepulseError


class BrokerError(LivepulseError):
    """The local broker could not be fetched, started, reached or stopped."""
