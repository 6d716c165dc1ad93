"""The fault suite's short form: each scenario's row must show nothing missing, wrong or double counted.

The full form is ``make faults`` (``python -m loadtest.faults``); both run the
same scenarios (``loadtest.faults``) on a broker the suite starts for itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.localkafka import BrokerSettings
from loadtest import faults

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fault_broker() -> Iterator[BrokerSettings]:
    try:
        with faults.suite_broker() as broker:
            yield broker
    except faults.BrokerError as exc:
        pytest.fail(f"the fault suite's Kafka broker could not start: {exc}", pytrace=False)


@pytest.mark.parametrize("scenario", faults.SCENARIOS)
async def test_fault_scenario(scenario: str, fault_broker: BrokerSettings) -> None:
    row = await faults.Scenario(
        scenario, faults.FaultConfig.short(), fault_broker.bootstrap, fault_broker, faults.log_dir()
    ).run()
    print(f"\n{faults.HEADER}\n{faults.format_row(row)}")
    assert row.windows_expected > 0 and row.events > 0
    assert row.ok, f"{faults.format_row(row)}\n" + "\n".join(row.examples)
    if scenario == "corrupt-changelog":
        assert row.quarantined == 1
