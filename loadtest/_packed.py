"""Records the load test keeps by the million (the truth and what the worker published), packed, and
moved to disk once there are many.

A record (a slots dataclass such as ``RoomStats``) is kept as the JSON array of its field values,
~100 bytes, and read back into an equal record on every access; as objects each took ~500 bytes.
Up to ``spill_at`` entries the mapping is a dict of those bytes (string parts of the keys interned,
so the many windows of one room share its id). Past it, every entry moves to a private temporary
SQLite database (a file SQLite deletes when the mapping is dropped) with a page cache of a few MB,
and new writes are buffered and written in batches: the load test's memory then no longer grows
with the length of the run (a 100 000-room run held 2.1 GB, most of it these records and the
message logs, ``loadtest.traffic.MessageLog``).

The mapping behaves as a dict, insertion order included (a replaced value keeps its place).
"""

from __future__ import annotations

import sqlite3
import struct
import sys
from collections.abc import Callable, Hashable, ItemsView, Iterator, MutableMapping, ValuesView
from dataclasses import fields
from operator import attrgetter
from typing import Any, Generic, TypeVar

import orjson

from .traffic import kept

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")

#: entries held in memory before the mapping moves to disk (~230 bytes each with the key)
SPILL_AT = 100_000
#: buffered writes per batch once on disk
_BATCH = 20_000
#: SQLite's page cache per mapping, in KiB (a negative ``cache_size`` is KiB)
_CACHE_KIB = 8_192
_FLOAT = struct.Struct("<d")


def _key_bytes(key: Any) -> bytes:
    return kept(orjson.dumps(key))  # orjson's own result sits in a 4 KB allocation


def _key_of(raw: bytes) -> Any:
    key = orjson.loads(raw)
    return tuple(key) if type(key) is list else key


class SpilledMap(MutableMapping[K, V], Generic[K, V]):
    """A dict whose values are kept as bytes (``dumps``/``loads``), in memory up to ``spill_at``
    entries (default ``SPILL_AT``) and in a temporary SQLite database after that. Keys are tuples
    of str and int (or one of those): on disk they are their JSON."""

    __slots__ = ("_db", "_dumps", "_loads", "_mem", "_pending", "_spill_at")

    def __init__(
        self, dumps: Callable[[V], bytes], loads: Callable[[bytes], V], *, spill_at: int | None = None
    ) -> None:
        self._dumps = dumps
        self._loads = loads
        self._spill_at = SPILL_AT if spill_at is None else spill_at
        self._mem: dict[Any, bytes] | None = {}
        self._db: sqlite3.Connection | None = None
        #: writes not yet in the database (key bytes -> value bytes), in order
        self._pending: dict[bytes, bytes] = {}

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def __del__(self) -> None:
        if self._db is not None:
            self._db.close()  # SQLite deletes the temporary file

    # -- dict ------------------------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        mem = self._mem
        if mem is not None:
            return self._loads(mem[key])
        raw = self._raw(_key_bytes(key))
        if raw is None:
            raise KeyError(key)
        return self._loads(raw)

    def get(self, key: K, default: Any = None) -> Any:
        mem = self._mem
        raw = mem.get(key) if mem is not None else self._raw(_key_bytes(key))
        return default if raw is None else self._loads(raw)

    def __setitem__(self, key: K, value: V) -> None:
        raw = self._dumps(value)
        mem = self._mem
        if mem is not None:
            if isinstance(key, tuple):
                key = tuple(sys.intern(part) if type(part) is str else part for part in key)  # type: ignore[assignment]
            mem[key] = raw
            if len(mem) > self._spill_at:
                self._spill()
            return
        pending = self._pending
        pending[_key_bytes(key)] = raw
        if len(pending) >= _BATCH:
            self._flush()

    def __delitem__(self, key: K) -> None:
        mem = self._mem
        if mem is not None:
            del mem[key]
            return
        self._flush()
        assert self._db is not None
        if self._db.execute("DELETE FROM m WHERE k = ?", (_key_bytes(key),)).rowcount == 0:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        mem = self._mem
        if mem is not None:
            return key in mem
        return self._raw(_key_bytes(key)) is not None

    def __iter__(self) -> Iterator[K]:
        mem = self._mem
        if mem is not None:
            return iter(mem)
        return (_key_of(k) for k, _ in self._rows())

    def __len__(self) -> int:
        mem = self._mem
        if mem is not None:
            return len(mem)
        self._flush()
        assert self._db is not None
        count: int = self._db.execute("SELECT count(*) FROM m").fetchone()[0]
        return count

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} entries{self._where()})"

    def _where(self) -> str:
        return ", on disk" if self.spilled else ""

    # -- storage ---------------------------------------------------------------------------

    def _pairs(self) -> Iterator[tuple[K, V]]:
        loads = self._loads
        mem = self._mem
        if mem is not None:
            for key, raw in mem.items():
                yield key, loads(raw)
        else:
            for k, raw in self._rows():
                yield _key_of(k), loads(raw)

    def _rows(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key bytes, value bytes) in insertion order, read a batch at a time."""
        self._flush()
        assert self._db is not None
        cursor = self._db.execute("SELECT k, v FROM m ORDER BY rowid")
        while rows := cursor.fetchmany(_BATCH):
            yield from rows

    def _raw(self, k: bytes) -> bytes | None:
        raw = self._pending.get(k)
        if raw is not None:
            return raw
        assert self._db is not None
        row = self._db.execute("SELECT v FROM m WHERE k = ?", (k,)).fetchone()
        return None if row is None else row[0]

    def _spill(self) -> None:
        """Move every entry to a private temporary database (SQLite deletes its file on close)."""
        db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{_CACHE_KIB}"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE m (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self._db = db
        mem, self._mem = self._mem, None
        assert mem is not None
        self._pending = {_key_bytes(key): raw for key, raw in mem.items()}
        del mem
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        # an upsert keeps a replaced key's rowid: its place in the order, as a dict does
        db.executemany(
            "INSERT INTO m (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            pending.items(),
        )
        db.execute("COMMIT")
        self._pending = {}


class _Items(ItemsView[K, V]):
    _mapping: SpilledMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return self._mapping._pairs()


class _Values(ValuesView[V]):
    _mapping: SpilledMap[Any, V]

    def __iter__(self) -> Iterator[V]:
        return (value for _, value in self._mapping._pairs())


class PackedRecords(SpilledMap[K, R]):
    """A dict of records of one dataclass type, each kept as the JSON array of its fields."""

    __slots__ = ("_kind",)

    def __init__(self, kind: Callable[..., R], *, spill_at: int | None = None) -> None:
        self._kind = kind
        values: Callable[[R], tuple[Any, ...]] = attrgetter(*(f.name for f in fields(kind)))  # type: ignore[arg-type]
        super().__init__(
            lambda record: kept(orjson.dumps(values(record))),
            lambda raw: kind(*orjson.loads(raw)),
            spill_at=spill_at,
        )

    def __repr__(self) -> str:
        return f"PackedRecords({self._kind.__name__}, {len(self)} records{self._where()})"


def packed_floats(*, spill_at: int | None = None) -> SpilledMap[Any, float]:
    """A dict of floats (8 bytes each), spilled as the records are."""
    return SpilledMap(_FLOAT.pack, lambda raw: _FLOAT.unpack(raw)[0], spill_at=spill_at)
