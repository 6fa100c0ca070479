"""The durable queue: batches of encoded readings in one SQLite file (WAL).

One row is one future telemetry message. Its sequence number is the row's key, declared
``AUTOINCREMENT`` so SQLite keeps the highest number ever used in ``sqlite_sequence``: a
number is never reused, even after every row was sent and deleted, and the sequence
continues across restarts. Bodies are stored zlib-compressed, which keeps the bytes written
to the SD card per reading low (the WAL writes every page twice).

All methods are blocking and must be called from one thread (the writer's executor).
"""

from __future__ import annotations

import logging
import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.model import Durability

__all__ = ["BufferStats", "BufferStore", "StoreError", "StoredBatch"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    readings INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
"""
_FORMAT_VERSION = 1
_COMPRESS_LEVEL = 1
_CACHE_KIB = 512


class StoreError(Exception):
    """The buffer file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    seq: int
    readings: int
    created: float
    body: bytes
    """Uncompressed body, ready for the envelope."""


@dataclass(frozen=True, slots=True)
class BufferStats:
    batches: int
    readings: int
    first_seq: int | None
    last_seq: int
    """Highest sequence number ever assigned (0 before the first batch)."""
    file_bytes: int


class BufferStore:
    """SQLite buffer of stored batches, appended in groups and deleted after PUBACK."""

    def __init__(self, path: Path, *, durability: Durability, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.evicted_batches = 0
        self.evicted_readings = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={durability.value.upper()}")
            # Rows are written once and read once: a small page cache is enough, and RSS
            # on a 512 MB gateway matters more than re-reading a page.
            self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)",
                             (_FORMAT_VERSION,))
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'batch'").fetchone()
            self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open buffer {path}: {exc}") from exc
        self.last_seq: int = row[0] if row else 0

    def append(self, batches: Sequence[tuple[int, bytes]], *, created: float) -> list[int]:
        """Store ``(readings, body)`` batches in one transaction; returns their sequence
        numbers. Once this returns, the readings are accepted."""
        first = self.last_seq + 1
        rows = [(first + i, created, readings, zlib.compress(body, _COMPRESS_LEVEL))
                for i, (readings, body) in enumerate(batches)]
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO batch(seq, created, readings, body) VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to buffer {self.path}: {exc}") from exc
        self.last_seq = first + len(rows) - 1
        self._enforce_cap()
        return [r[0] for r in rows]

    def read_after(self, seq: int, limit: int) -> list[StoredBatch]:
        """The oldest stored batches with a sequence number above ``seq``."""
        rows = self._db.execute(
            "SELECT seq, readings, created, body FROM batch WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit)).fetchall()
        return [StoredBatch(s, n, c, zlib.decompress(b)) for s, n, c, b in rows]

    def delete(self, seqs: Sequence[int]) -> None:
        """Forget batches the broker acknowledged."""
        if not seqs:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM batch WHERE seq = ?", [(s,) for s in seqs])

    def stats(self) -> BufferStats:
        count, readings, first = self._db.execute(
            "SELECT count(*), coalesce(sum(readings), 0), min(seq) FROM batch").fetchone()
        return BufferStats(batches=count, readings=readings, first_seq=first,
                           last_seq=self.last_seq, file_bytes=self._file_bytes())

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # closing must not hide the caller's own error
            log.warning("buffer checkpoint at close failed: %s", exc)
        self._db.close()

    # internals ----------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _file_bytes(self) -> int:
        pages, free = (self._db.execute("PRAGMA page_count").fetchone()[0],
                       self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return int((pages - free) * self._page_size)

    def _enforce_cap(self) -> None:
        """Drop the oldest batches while the used pages exceed ``max_bytes``.

        Counted and logged; the loss ledger of issue #4 reports them to the platform.
        """
        if self._file_bytes() <= self.max_bytes:
            return
        while self._file_bytes() > self.max_bytes:
            rows = self._db.execute(
                "SELECT seq, readings FROM batch ORDER BY seq LIMIT 64").fetchall()
            if not rows:
                return
            with self._transaction():
                self._db.execute("DELETE FROM batch WHERE seq <= ?", (rows[-1][0],))
            self.evicted_batches += len(rows)
            self.evicted_readings += sum(r[1] for r in rows)
            log.warning("buffer over max_bytes=%d: dropped oldest batches seq %d..%d "
                        "(%d readings)", self.max_bytes, rows[0][0], rows[-1][0],
                        sum(r[1] for r in rows))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error: one commit per group."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
