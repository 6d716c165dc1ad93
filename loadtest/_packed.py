"""Records the load test keeps by the million (the truth and what the worker published), packed, and
moved to disk once there are many.

A record (a dataclass such as ``RoomStats``) is kept as the JSON array of its field values,
~100 bytes, and read back into an equal record on every access; as objects each took ~500 bytes.
Up to ``spill_at`` entries the mapping is a dict of those bytes (string parts of the keys interned,
so the many windows of one room share its id). Past it, every entry moves to a private temporary
SQLite database (a file SQLite deletes when the mapping is dropped) with a page cache of a few MB,
and new writes are buffered and written in batches: the load test's memory then no longer grows
with the length of the run (a 100 000-room run held 2.1 GB, most of it these records and the
message logs, ``loadtest.traffic.MessageLog``).

The mapping behaves as a dict, but for its order once on disk (``SpilledMap``).
"""

from __future__ import annotations

import sqlite3
import struct
import sys
from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterable,
    Iterator,
    MutableMapping,
    Sequence,
    ValuesView,
)
from dataclasses import fields
from itertools import islice
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
_CACHE_KIB = 16_384
#: keys per lookup query of :meth:`SpilledMap.get_many`, and rows per write of a batch
_LOOKUP = 500
_WRITE = 1_000
_FLOAT = struct.Struct("<d")


def _key_bytes(key: Any) -> bytes:
    """A key's bytes on disk: the JSON of a tuple reversed, so the window start or session start at
    its end comes first and keys written in time order land at the end of the index (appending to
    a B-tree needs only its last pages in the cache; keys in room order touched a random page
    each). Held only while a batch is written or looked up (orjson's result sits in a 4 KB
    allocation)."""
    return orjson.dumps(key[::-1] if type(key) is tuple else key)


def _key_of(raw: bytes) -> Any:
    key = orjson.loads(raw)
    return tuple(reversed(key)) if type(key) is list else key


class SpilledMap(MutableMapping[K, V], Generic[K, V]):
    """A dict whose values are kept as bytes (``dumps``/``loads``), in memory up to ``spill_at``
    entries (default ``SPILL_AT``) and in a temporary SQLite database after that. Keys are tuples
    of str and int (or one of those): on disk they are their JSON, reversed (``_key_bytes``).

    Iteration is in insertion order in memory, and in key order on disk (by window or session
    start first): nothing that reads these mappings depends on their order."""

    __slots__ = ("_db", "_dumps", "_loads", "_mem", "_pending", "_spill_at")

    def __init__(
        self, dumps: Callable[[V], bytes], loads: Callable[[bytes], V], *, spill_at: int | None = None
    ) -> None:
        self._dumps = dumps
        self._loads = loads
        self._spill_at = SPILL_AT if spill_at is None else spill_at
        self._mem: dict[Any, bytes] | None = {}
        self._db: sqlite3.Connection | None = None
        #: writes not yet in the database, key -> value bytes
        self._pending: dict[Any, bytes] = {}

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def __del__(self) -> None:
        if self._db is not None:
            self._db.close()  # SQLite deletes the temporary file

    # -- dict ------------------------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        mem = self._mem
        raw = mem[key] if mem is not None else self._raw(key)
        if raw is None:
            raise KeyError(key)
        return self._loads(raw)

    def get(self, key: K, default: Any = None) -> Any:
        mem = self._mem
        raw = mem.get(key) if mem is not None else self._raw(key)
        return default if raw is None else self._loads(raw)

    def get_many(self, keys: Sequence[K]) -> list[V | None]:
        """``[self.get(key) for key in keys]``, with one query per few hundred keys once on disk."""
        mem = self._mem
        found = mem if mem is not None else self._raw_many(keys)
        loads = self._loads
        return [None if (raw := found.get(key)) is None else loads(raw) for key in keys]

    def absent(self, keys: Iterable[K]) -> list[K]:
        """The keys of ``keys`` not in the mapping, in order (one query per few hundred keys; the
        keys are read as they come, so another mapping on disk can be passed as it is)."""
        mem = self._mem
        if mem is not None:
            return [key for key in keys if key not in mem]
        out: list[K] = []
        it = iter(keys)
        while chunk := list(islice(it, _LOOKUP)):
            found = self._raw_many(chunk)
            out += [key for key in chunk if key not in found]
        return out

    def __setitem__(self, key: K, value: V) -> None:
        # only keys that come back from disk as they went: str, int, or a flat tuple of them (no
        # float or bool, which a dict takes as equal to an int, no nesting)
        parts: Any = key
        if type(parts) is tuple:
            if not all(type(part) is str or type(part) is int for part in parts):
                raise TypeError(f"a key of str and int only, not {key!r}")
        elif type(parts) is not str and type(parts) is not int:
            raise TypeError(f"a key of str and int only, not {key!r}")
        raw = self._dumps(value)
        mem = self._mem
        if mem is not None:
            if type(parts) is tuple:
                key = tuple(sys.intern(part) if type(part) is str else part for part in parts)  # type: ignore[assignment]
            mem[key] = raw
            if len(mem) > self._spill_at:
                self._spill()
            return
        pending = self._pending
        pending[key] = raw
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
        return self._raw(key) is not None

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
        """Every (key bytes, value bytes) in key order, read a batch at a time."""
        self._flush()
        assert self._db is not None
        cursor = self._db.execute("SELECT k, v FROM m ORDER BY k")
        while rows := cursor.fetchmany(_BATCH):
            yield from rows

    def _raw(self, key: Any) -> bytes | None:
        raw = self._pending.get(key)
        if raw is not None:
            return raw
        assert self._db is not None
        row = self._db.execute("SELECT v FROM m WHERE k = ?", (_key_bytes(key),)).fetchone()
        return None if row is None else row[0]

    def _raw_many(self, keys: Sequence[Any]) -> dict[Any, bytes]:
        """Key -> value bytes of those of ``keys`` present (the buffered writes are the newer)."""
        pending = self._pending
        db = self._db
        assert db is not None
        ask = [key for key in dict.fromkeys(keys) if key not in pending]
        found: dict[Any, bytes] = {}
        for i in range(0, len(ask), _LOOKUP):
            asked = {_key_bytes(key): key for key in ask[i : i + _LOOKUP]}  # one slice's key bytes at a time
            marks = ",".join("?" * len(asked))
            for k, raw in db.execute(f"SELECT k, v FROM m WHERE k IN ({marks})", list(asked)):
                found[asked[k]] = raw
        for key in keys:
            raw = pending.get(key)
            if raw is not None:
                found[key] = raw
        return found

    def _spill(self) -> None:
        """Move every entry to a private temporary database (SQLite deletes its file on close)."""
        db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{_CACHE_KIB}"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE m (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        self._db = db
        self._pending, self._mem = self._mem or {}, None
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            items = list(pending.items())
            for i in range(0, len(items), _WRITE):  # the key bytes of one slice at a time
                db.executemany(
                    "INSERT OR REPLACE INTO m (k, v) VALUES (?, ?)",
                    [(_key_bytes(key), raw) for key, raw in items[i : i + _WRITE]],
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._pending = {}

    def clear(self) -> None:
        """Empty, back in memory (the inherited ``clear`` removes one entry per query)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._mem, self._pending = {}, {}


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
