"""Client errors leave the runtime translated into livepulse's error tree."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError, NotLeaderForPartitionError, ProducerFenced

from streams._errors import kafka_errors
from streams.exceptions import FencedError, InfrastructureError, LivepulseError


@pytest.mark.parametrize(
    ("raised", "translated", "retriable"),
    [
        (ProducerFenced(), FencedError, False),
        (KafkaConnectionError("broker gone"), InfrastructureError, True),
        (NotLeaderForPartitionError(), InfrastructureError, True),
    ],
)
def test_kafka_errors_become_livepulse_errors_with_their_cause(
    raised: Exception, translated: type[LivepulseError], retriable: bool
) -> None:
    with pytest.raises(translated) as caught, kafka_errors("committing transaction t-0"):
        raise raised
    assert caught.value.__cause__ is raised
    assert caught.value.retriable is retriable
    assert "committing transaction t-0" in str(caught.value)


def test_other_errors_pass_through_untouched() -> None:
    with pytest.raises(ValueError), kafka_errors("anything"):
        raise ValueError("not a client error")
