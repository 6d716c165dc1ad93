"""An input partition's state as the data plane judges it from its consumer's last fetch response."""

from __future__ import annotations

import pytest

from streams.dataplane import input_state

NOW, FRESH = 100_000, 2_000


@pytest.mark.parametrize(
    ("position", "high", "stable", "polled", "want"),
    [
        pytest.param(50, 50, 50, NOW - 100, (False, False), id="caught up: silent, may turn idle"),
        pytest.param(40, 50, 50, NOW - 100, (True, True), id="records to read"),
        pytest.param(
            50, 60, 50, NOW - 100, (True, True), id="open upstream transaction: events on their way"
        ),
        pytest.param(
            50, 60, 50, NOW - 9_000, (True, False), id="open transaction, no response since: outage"
        ),
        pytest.param(40, 50, 50, NOW - 9_000, (True, True), id="records to read, no response since"),
        pytest.param(50, 50, 50, NOW - 9_000, (True, False), id="caught up, no response since: outage"),
        pytest.param(0, None, None, None, (True, False), id="no fetch response yet"),
        pytest.param(50, 50, None, NOW - 100, (False, False), id="no last stable offset reported: high only"),
        pytest.param(40, 50, None, NOW - 100, (True, True), id="no last stable offset, records to read"),
    ],
)
def test_input_state(
    position: int, high: int | None, stable: int | None, polled: int | None, want: tuple[bool, bool]
) -> None:
    assert input_state(position, high, stable, polled, NOW, FRESH) == want
