"""aiokafka's errors translated into livepulse's error tree (``streams.exceptions``) at the boundary.

Runtime modules wrap their client calls in :func:`kafka_errors`, so what leaves
them is a :class:`~streams.exceptions.LivepulseError`: :class:`FencedError` when
another worker took over a transactional id, :class:`InfrastructureError`
(retriable) for anything else the client reports; the aiokafka error is the
``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from .exceptions import FencedError, InfrastructureError, LivepulseError


def translate(exc: KafkaError, doing: str) -> LivepulseError:
    if isinstance(exc, ProducerFenced | InvalidProducerEpoch):
        return FencedError(f"{doing}: another worker took over ({exc!r})")
    return InfrastructureError(f"{doing} failed: {exc!r}")


@contextmanager
def kafka_errors(doing: str) -> Iterator[None]:
    """Raise a client error from the block as its translation."""
    try:
        yield
    except KafkaError as exc:
        raise translate(exc, doing) from exc
