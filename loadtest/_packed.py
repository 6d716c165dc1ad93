"""Output records held packed: the load test keeps millions of them (the truth and what the worker
published), and as objects each took ~500 bytes.

A record (a slots dataclass such as ``RoomStats``) is kept as the JSON array of its field values,
~100 bytes, and read back into an equal record on every access; string parts of the keys are
interned, so the many windows of one room share its id. The mapping behaves as a dict of records.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from dataclasses import fields
from operator import attrgetter
from typing import Any, Generic, TypeVar

import orjson

from .traffic import kept

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class PackedRecords(MutableMapping[K, R], Generic[K, R]):
    """A dict of records of one dataclass type, each kept as the JSON array of its fields."""

    __slots__ = ("_fields", "_kind", "_packed")

    def __init__(self, kind: Callable[..., R]) -> None:
        self._kind = kind
        self._fields: Callable[[R], tuple[Any, ...]] = attrgetter(*(f.name for f in fields(kind)))  # type: ignore[arg-type]
        self._packed: dict[K, bytes] = {}

    def __getitem__(self, key: K) -> R:
        return self._kind(*orjson.loads(self._packed[key]))

    def __setitem__(self, key: K, record: R) -> None:
        if isinstance(key, tuple):
            key = tuple(sys.intern(part) if type(part) is str else part for part in key)  # type: ignore[assignment]
        self._packed[key] = kept(orjson.dumps(self._fields(record)))

    def __delitem__(self, key: K) -> None:
        del self._packed[key]

    def __contains__(self, key: object) -> bool:
        return key in self._packed

    def __iter__(self) -> Iterator[K]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def __repr__(self) -> str:
        return f"PackedRecords({self._kind.__name__}, {len(self)} records)"
