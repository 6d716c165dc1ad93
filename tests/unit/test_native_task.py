"""The Python task's tests, unchanged, against ``NativeTaskAggregator`` (its rooms in the native
table, ``streams/native/src/rooms.rs``): every test of the modules below runs a second time here,
with the module's ``TaskAggregator`` the native one (and the pipeline's tasks native). The
pipeline's tests write into a native outbox here (``OutboxSink``), as the worker does: the table
writes its records into the outbox's batches itself, and the tests read them back from the bytes.

Left out, each for its reason (``NOT_NATIVE``): tests of how the Python rooms keep their memory
(shared offsets dicts, empty containers), which the native rooms keep otherwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence

import pytest
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.pipeline as pipeline
from schemas import ViewerEvent
from streams.core import CoreConfig, PartitionCache, TaskAggregator, _fastcore
from streams.core import _native_rooms as native_rooms
from tests.unit import test_pipeline

T0 = 1_700_000_000_000

MODULES = (
    "test_core_oracle",
    "test_core_changelog",
    "test_core_dedup",
    "test_core_expiry",
    "test_core_hostile",
    "test_core_rollups",
    "test_core_sessions",
    "test_core_alerts",
    "test_core_alignment",
    "test_core_senders",
    "test_core_query",
    "test_pipeline",
)

#: tests of the Python rooms' own layout in memory
NOT_NATIVE = {
    "test_core_oracle.test_idle_rooms_own_no_empty_containers_and_share_their_checkpoint_offsets",
    "test_core_oracle.test_rooms_restored_together_go_on_sharing_offsets_while_an_input_is_silent",
}

_modules = [importlib.import_module(f"tests.unit.{name}") for name in MODULES]
for _module, _name in zip(_modules, MODULES, strict=True):
    for _attr, _test in vars(_module).items():
        if _attr.startswith("test_") and callable(_test) and f"{_name}.{_attr}" not in NOT_NATIVE:
            globals()[f"test_{_name[len('test_') :]}__{_attr[len('test_') :]}"] = _test


class OutboxSink(test_pipeline.ListSink):
    """The pipeline tests' sink with a native outbox (``streams._outbound.Outbound``'s in the
    worker): records written into it, by ``add`` or by the native table directly, are read back
    from its record batches (aiokafka's reader) when the test looks at them."""

    def __init__(self) -> None:
        self.outbox = _fastcore.Outbox(1 << 20, True)
        super().__init__()

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self.outbox.add(topic, partition, key, value, list(headers))

    @property  # type: ignore[override]
    def records(self) -> list[tuple[str, int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]]:
        for topic, partition, batch in self.outbox.take():
            read = DefaultRecordBatch(batch.build_bytes())
            assert read.validate_crc()
            self._read += [(topic, partition, r.key, r.value, tuple(r.headers)) for r in read]
        return self._read

    @records.setter
    def records(
        self, records: list[tuple[str, int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]]
    ) -> None:
        self._read = records


@pytest.fixture(autouse=True)
def native_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module in _modules:
        monkeypatch.setattr(module, "TaskAggregator", native_rooms.NativeTaskAggregator)
    monkeypatch.setattr(pipeline, "TaskAggregator", native_rooms.NativeTaskAggregator)  # its tasks
    monkeypatch.setattr(test_pipeline, "ListSink", OutboxSink)
    yield


@given(
    held=st.sets(st.integers(0, 60), max_size=30),
    events=st.lists(st.integers(0, 120), max_size=80),
    partitions=st.integers(1, 12),
    here=st.integers(0, 11),
)
@settings(max_examples=200, deadline=None)
def test_the_table_finds_the_first_foreign_room_as_the_python_task_does(
    held: set[int], events: list[int], partitions: int, here: int
) -> None:
    """``first_foreign`` natively (the table's rooms, murmur2 in Rust) against the base class's
    loop over the same rooms with the pipeline's partitioner."""
    here %= partitions
    config = CoreConfig()
    native = native_rooms.NativeTaskAggregator(config)
    python = TaskAggregator(config)
    for core in (native, python):
        core.apply(0, [(i, ViewerEvent("join", f"r{n}", "u", T0)) for i, n in enumerate(sorted(held))], T0)
    items = [(i, ViewerEvent("join", f"r{n}", "u", T0)) for i, n in enumerate(events)]
    route = PartitionCache(partitions)
    want = TaskAggregator.first_foreign(python, items, route, here)
    assert native.first_foreign(items, route, here) == want
    assert want is None or (f"r{events[want]}" not in python.rooms and route(f"r{events[want]}") != here)
