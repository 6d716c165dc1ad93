"""The Kafka client's repeated messages are thinned, with a count of what was dropped."""

from __future__ import annotations

import logging

import pytest

from streams._logstorm import RepeatFilter, limit_repeats


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_repeats_of_one_kind_are_dropped_for_the_window_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    logger = logging.getLogger("livepulse-test.storm")
    repeat = RepeatFilter(10.0, clock)
    logger.addFilter(repeat)
    try:
        with caplog.at_level(logging.INFO, logger="livepulse-test.storm"):
            for i in range(5_000):  # the same template, other arguments: one kind
                logger.error("Unable connect to node with id %s: %s", 1, f"refused {i}")
            logger.warning("Unable connect to node with id %s: %s", 1, "refused")  # another level
            logger.error("Unable to update metadata from %s", [1])  # another template
            clock.now += 10.5
            logger.error("Unable connect to node with id %s: %s", 1, "refused again")
            logger.error("Unable connect to node with id %s: %s", 1, "refused at once")
            for group in ("livepulse", "livepulse-dataplane"):  # information is never thinned
                logger.info("Joined group %r", group)
    finally:
        logger.removeFilter(repeat)
    assert [r.getMessage() for r in caplog.records] == [
        "Unable connect to node with id 1: refused 0",
        "Unable connect to node with id 1: refused",
        "Unable to update metadata from [1]",
        "Unable connect to node with id 1: refused again"
        " (4999 more like this in the 10 s before, not logged)",
        "Joined group 'livepulse'",
        "Joined group 'livepulse-dataplane'",
    ]


def test_every_kafka_client_logger_gets_the_filter_once() -> None:
    import aiokafka  # noqa: F401  (its modules create their loggers)

    repeat = limit_repeats()
    assert limit_repeats() is repeat
    # aiokafka.client logs as "aiokafka"
    for name in (
        "aiokafka",
        "aiokafka.conn",
        "aiokafka.consumer.group_coordinator",
        "aiokafka.producer.sender",
    ):
        assert logging.getLogger(name).filters.count(repeat) == 1
