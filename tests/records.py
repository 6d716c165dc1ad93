"""The one comparison of published records with the oracle's, shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from loadtest.oracle import unique_viewers_close


def assert_records_match(got: Mapping[Any, Any], want: Mapping[Any, Any]) -> None:
    """The same keys, and every record (room-stats or session) equal field by field, unique
    viewers within the HyperLogLog bound."""
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        have = got[key]
        assert unique_viewers_close(have.unique_viewers, expected.unique_viewers), (key, have, expected)
        assert without_unique_viewers(have) == without_unique_viewers(expected), key


def without_unique_viewers(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name != "unique_viewers"}
