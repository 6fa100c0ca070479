"""The durable queue: batches of encoded readings in one SQLite file (WAL), with limits,
a loss ledger and recovery from a damaged file.

One row is one future message. Its sequence number is the row's key, declared
``AUTOINCREMENT`` so SQLite keeps the highest number ever used in ``sqlite_sequence``: a
number is never reused, even after every row was sent and deleted, and the sequence
continues across restarts. A small side file (``<buffer>.seq``) reserves numbers ahead, so
even a buffer file that had to be quarantined does not make the sequence start again.
Bodies are stored zlib-compressed: the WAL writes every page twice, and SD cards wear by
the byte.

Whatever the buffer gives up (evicted by a limit, refused, unreadable, lost with a damaged
file) is recorded in the ``ledger`` table with its sequence ranges and a named reason; the
forwarder reports those entries to the platform.

All methods are blocking and must be called from one thread (the writer's executor).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson

from edge_agent.clock import BOOT_ID
from edge_agent.config.model import Durability, OverflowPolicy, ThinRule
from edge_agent.telemetry.contract import BATCH_OVERHEAD, Kind, format_ts, parse_ts

from .thinning import thin_bodies

__all__ = [
    "BufferStats",
    "BufferStore",
    "LedgerEntry",
    "LossReason",
    "StoreError",
    "StoredBatch",
    "seal",
]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    readings INTEGER NOT NULL,
    body BLOB NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0,
    clock_offset REAL,
    boot_id TEXT,
    clock_flag INTEGER NOT NULL DEFAULT 0,
    thinned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    reason TEXT NOT NULL,
    first_seq INTEGER,
    last_seq INTEGER,
    messages INTEGER,
    readings INTEGER,
    detail TEXT,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
"""
_FORMAT_VERSION = 4
_HELD = "clock_offset IS NOT NULL AND clock_flag = 0"
"""Rows whose timestamps wait for a trusted clock: nothing at or after them is sent."""
_COMPRESS_LEVEL = 1
_CACHE_KIB = 512
_RESERVE = 1_000_000
"""Sequence numbers reserved ahead in the side file: one small write per million messages."""
_EVICT_CHUNK = 256
_THIN_CHUNK = 64
"""Batches thinned together: enough for a rule to see many samples of each device."""


class LossReason(StrEnum):
    """Why readings will never be sent (the ledger's reasons, part of the contract)."""

    EVICTED_BY_CAP = "evicted_by_cap"
    EVICTED_BY_AGE = "evicted_by_age"
    EVICTED_BY_FREE_SPACE = "evicted_by_free_space"
    REFUSED_BY_CAP = "refused_by_cap"
    REFUSED_BY_FREE_SPACE = "refused_by_free_space"
    REJECTED_BY_BROKER = "rejected_by_broker"
    UNREADABLE_ROW = "unreadable_row"
    BUFFER_CORRUPT = "buffer_corrupt"
    SEQUENCE_SKIPPED = "sequence_skipped"
    THINNED = "thinned"
    """Readings removed from batches that are still delivered (``buffer.thin``)."""


class StoreError(Exception):
    """The buffer file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    seq: int
    readings: int
    created: float
    body: bytes
    """Uncompressed body, ready for the envelope."""
    clock_unsynchronized: bool = False
    """Timestamps taken with an unsynchronised clock that could not be corrected."""


@dataclass(frozen=True, slots=True)
class BufferStats:
    batches: int
    readings: int
    first_seq: int | None
    last_seq: int
    """Highest sequence number ever assigned (0 before the first batch)."""
    file_bytes: int
    """Bytes of the pages in use (the file itself does not shrink)."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    at: float
    reason: str
    first_seq: int | None
    last_seq: int | None
    messages: int | None
    readings: int | None
    detail: str | None


class BufferStore:
    """SQLite buffer of stored batches, appended in groups and deleted after PUBACK."""

    def __init__(self, path: Path, *, durability: Durability, max_bytes: int,
                 max_age_s: float | None = None, min_free_bytes: int = 0,
                 policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
                 thin: ThinRule | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.thin = thin
        """Thin old telemetry before dropping any (policies drop_oldest and drop_newest)."""
        self.in_flight: frozenset[int] = frozenset()
        """Batches the forwarder sent and has not deleted yet (it rebinds this): limits do
        not thin or evict them, as they may already be delivered."""
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.min_free_bytes = min_free_bytes
        self.policy = policy
        self._clock = clock
        self._seq_file = path.with_name(path.name + ".seq")
        self.quarantined: Path | None = None
        self.unreported = 0
        """Ledger entries not yet reported to the platform (read by the forwarder)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            reserved = self._read_reservation()
            self._db = self._open_checked(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={durability.value.upper()}")
            # Rows are written once and read once: a small page cache is enough, and RSS
            # on a 512 MB gateway matters more than re-reading a page.
            self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'batch'").fetchone()
            self.last_seq: int = row[0] if row else 0
            if self.last_seq < reserved and (row is None or self.quarantined):
                # A fresh file where numbers were handed out before: continue above them.
                self._set_sequence(reserved)
            if self.quarantined is not None:
                self._record(LossReason.BUFFER_CORRUPT, None, self.last_seq, None, None,
                             f"damaged buffer moved to {self.quarantined.name}; sequence "
                             f"numbers up to {self.last_seq} that were not received are "
                             "lost with it")
            elif durability is Durability.NORMAL and self._stopped_uncleanly():
                # A power cut can roll back the last commits, and with them the sequence:
                # numbers already sent would be handed out again. Skip past every number
                # that may have been used, and say so.
                old = self.last_seq
                if reserved > old:
                    self._set_sequence(reserved)
                    self._record(LossReason.SEQUENCE_SKIPPED, old + 1, reserved, 0, 0,
                                 "unclean stop with durability normal: numbers that may "
                                 "have been used before it are not used again")
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', 0)")
            self._reserved = max(reserved, self.last_seq)
            self._reserve(self.last_seq)
            self.unreported = int(self._db.execute(
                "SELECT count(*) FROM ledger WHERE reported = 0").fetchone()[0])
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open buffer {path}: {exc}") from exc

    # opening and recovery -------------------------------------------------------------

    def _open_checked(self, path: Path) -> sqlite3.Connection:
        """Open the file; a file SQLite cannot read or that fails ``quick_check`` is moved
        aside with a timestamped name and a fresh buffer is started. The agent never
        refuses to start because of its buffer."""
        if path.exists():
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                result = db.execute("PRAGMA quick_check").fetchone()[0]
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                result = str(exc)
            if result == "ok":
                return db
            db.close()
            self.quarantined = self._quarantine(path, result)
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def _quarantine(self, path: Path, why: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(target) + suffix))
        log.error("buffer %s is damaged (%s): moved to %s, starting a fresh buffer",
                  path, why, target.name)
        return target

    def _migrate(self) -> None:
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(batch)")}
        for name, declaration in (("kind", "INTEGER NOT NULL DEFAULT 0"),  # format 1
                                  ("clock_offset", "REAL"), ("boot_id", "TEXT"),  # format 2
                                  ("clock_flag", "INTEGER NOT NULL DEFAULT 0"),
                                  ("thinned", "INTEGER NOT NULL DEFAULT 0")):  # format 4
            if name not in columns:
                self._db.execute(f"ALTER TABLE batch ADD COLUMN {name} {declaration}")
        self._db.execute(f"CREATE INDEX IF NOT EXISTS batch_held ON batch(seq) WHERE {_HELD}")
        self._db.execute("CREATE INDEX IF NOT EXISTS batch_unthinned ON batch(seq) "
                         "WHERE thinned = 0 AND kind = 0")
        # Held in an earlier boot: the monotonic clock they relate to is gone.
        self._db.execute(f"UPDATE batch SET clock_flag = 1 WHERE {_HELD} AND boot_id IS NOT ?",
                         (BOOT_ID,))
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('format', ?)",
                         (_FORMAT_VERSION,))

    def _stopped_uncleanly(self) -> bool:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
        return row is not None and row[0] == 0

    def _read_reservation(self) -> int:
        try:
            return int(self._seq_file.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("ignoring unreadable sequence reservation file %s", self._seq_file)
            return 0

    def _reserve(self, upto: int) -> None:
        """Keep the side file ahead of every number handed out (written atomically)."""
        if upto < self._reserved and self._seq_file.exists():
            return
        self._reserved = upto + _RESERVE
        tmp = self._seq_file.with_name(self._seq_file.name + ".tmp")
        with open(tmp, "w") as handle:
            handle.write(f"{self._reserved}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._seq_file)

    def _set_sequence(self, value: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM sqlite_sequence WHERE name = 'batch'")
            self._db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('batch', ?)",
                             (value,))
        self.last_seq = value

    # the data path ---------------------------------------------------------------------

    def append(self, batches: Sequence[tuple[int, bytes, Kind]], *, created: float,
               clock_offset: float | None = None, sealed: bool = False) -> list[int]:
        """Store ``(readings, body, kind)`` batches in one transaction and return their
        sequence numbers. Once this returns, the readings are accepted (or, under
        ``drop_newest`` with the buffer full, refused and recorded in the ledger).

        ``clock_offset`` (wall minus monotonic when the readings were stamped) marks
        timestamps taken with an untrusted clock: such batches are held back until
        :meth:`correct_clock` or :meth:`flag_held`. ``sealed``: the bodies went through
        :func:`seal` already."""
        first = self.last_seq + 1
        seqs = list(range(first, first + len(batches)))
        if not batches:
            return seqs
        self._reserve(seqs[-1])
        boot = BOOT_ID if clock_offset is not None else None
        rows = [(seq, created, readings, body if sealed else seal(body), int(kind),
                 clock_offset, boot)
                for seq, (readings, body, kind) in zip(seqs, batches, strict=True)]
        room, short = self._limits()
        incoming = sum(len(r[3]) for r in rows)
        while (self.policy is OverflowPolicy.DROP_NEWEST and self.thin and room is not None
               and room < incoming and self._thin_oldest()):
            room, short = self._limits()
        if self.policy is OverflowPolicy.DROP_NEWEST and room is not None and room < incoming:
            # Refused, but numbered: the platform sees the range in the ledger, not a gap.
            self._set_sequence(seqs[-1])
            self._record(LossReason.REFUSED_BY_FREE_SPACE if short
                         else LossReason.REFUSED_BY_CAP, first, seqs[-1], len(batches),
                         sum(b[0] for b in batches),
                         "min_free_bytes" if short else "max_bytes")
            return seqs
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO batch(seq, created, readings, body, kind, clock_offset, "
                    "boot_id) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to buffer {self.path}: {exc}") from exc
        self.last_seq = seqs[-1]
        self._enforce_limits()
        return seqs

    def read_after(self, seq: int, limit: int, *, upto: int | None = None,
                   max_bytes: int | None = None,
                   skip: Container[int] = frozenset()) -> list[StoredBatch]:
        """The oldest stored batches with a sequence number above ``seq`` (and at most
        ``upto``), leaving out those in ``skip``: at most ``limit`` of them and, past the
        first, at most ``max_bytes`` of bodies in all (each counted with
        ``BATCH_OVERHEAD``). Nothing at or after a batch held for a trusted clock is
        returned. A row that can no longer be decoded is removed and recorded in the
        ledger, never retried."""
        held = self._db.execute(f"SELECT min(seq) FROM batch WHERE {_HELD}").fetchone()[0]
        stop = min(held if held is not None else 2**63 - 1,
                   upto + 1 if upto is not None else 2**63 - 1)
        out: list[StoredBatch] = []
        unreadable: list[tuple[int, int, str]] = []
        size = 0
        # Rows are decompressed one at a time as the cursor steps: a message that is full
        # costs one row read too many, not a whole chunk.
        for s, n, c, b, flag in self._db.execute(
                "SELECT seq, readings, created, body, clock_flag FROM batch "
                "WHERE seq > ? AND seq < ? ORDER BY seq", (seq, stop)):
            if s in skip:
                continue
            try:
                body = zlib.decompress(b)
            except (zlib.error, TypeError) as exc:
                unreadable.append((s, n, str(exc)))
                continue
            size += len(body) + BATCH_OVERHEAD
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append(StoredBatch(s, n, c, body, bool(flag)))
            if len(out) >= limit:
                break
        for s, n, detail in unreadable:
            log.error("buffer row seq %d is unreadable (%s): dropped", s, detail)
            with self._transaction():
                self._db.execute("DELETE FROM batch WHERE seq = ?", (s,))
            self._record(LossReason.UNREADABLE_ROW, s, s, 1, n, detail)
        return out

    def delete(self, seqs: Sequence[int]) -> None:
        """Forget batches the broker acknowledged."""
        if not seqs:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM batch WHERE seq = ?", [(s,) for s in seqs])

    def correct_clock(self, offset: float) -> int:
        """The clock is trusted now, with ``offset`` = wall minus monotonic: shift every
        held timestamp of this boot by its error and release the batches. Returns how
        many batches were corrected."""
        rows = self._db.execute(
            f"SELECT seq, body, clock_offset FROM batch WHERE {_HELD} AND boot_id = ?",
            (BOOT_ID,)).fetchall()
        fixed = []
        for seq, body, held_offset in rows:
            try:
                members = shift_timestamps(zlib.decompress(body), offset - held_offset)
            except (zlib.error, ValueError) as exc:
                log.error("cannot correct timestamps of seq %d (%s): sent flagged", seq, exc)
                fixed.append((body, 1, seq))
                continue
            fixed.append((seal(members), 0, seq))
        with self._transaction():
            self._db.executemany("UPDATE batch SET body = ?, clock_flag = ?, clock_offset = "
                                 "NULL WHERE seq = ?", fixed)
            self._db.execute(f"UPDATE batch SET clock_flag = 1 WHERE {_HELD}")  # other boots
        return len(fixed)

    def flag_held(self) -> int:
        """Give up waiting for a trusted clock: release held batches, flagged."""
        with self._transaction():
            count = self._db.execute(f"UPDATE batch SET clock_flag = 1 WHERE {_HELD}").rowcount
        return int(count)

    def held(self) -> int:
        """Batches waiting for a trusted clock."""
        return int(self._db.execute(f"SELECT count(*) FROM batch WHERE {_HELD}").fetchone()[0])

    def record_rejected(self, batches: Sequence[tuple[int, int]], detail: str) -> None:
        """The broker refused a message for good (MQTT 5 reason code): ledger its
        ``(seq, readings)`` batches."""
        for first, last, messages, readings in _runs(list(batches)):
            self._record(LossReason.REJECTED_BY_BROKER, first, last, messages, readings,
                         detail)

    def oldest_seq(self) -> int | None:
        """The lowest sequence number still stored (``None``: the buffer is empty)."""
        row = self._db.execute("SELECT min(seq) FROM batch").fetchone()
        return None if row[0] is None else int(row[0])

    def full(self) -> bool:
        """True while a limit leaves no room for new batches (used by ``block``)."""
        room, _ = self._limits()
        return room is not None and room <= 0

    def stats(self) -> BufferStats:
        count, readings, first = self._db.execute(
            "SELECT count(*), coalesce(sum(readings), 0), min(seq) FROM batch").fetchone()
        return BufferStats(batches=count, readings=readings, first_seq=first,
                           last_seq=self.last_seq, file_bytes=self._used_bytes())

    # the ledger --------------------------------------------------------------------------

    def unreported_ledger(self, limit: int = 100) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT id, at, reason, first_seq, last_seq, messages, readings, detail "
            "FROM ledger WHERE reported = 0 ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [LedgerEntry(*r) for r in rows]

    def mark_reported(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with self._transaction():
            self._db.executemany("UPDATE ledger SET reported = 1 WHERE id = ?",
                                 [(i,) for i in ids])
        self.unreported = int(self._db.execute(
            "SELECT count(*) FROM ledger WHERE reported = 0").fetchone()[0])

    def ledger_totals(self) -> dict[str, int]:
        """Readings given up so far, per reason, over the buffer file's lifetime."""
        return {reason: int(total) for reason, total in self._db.execute(
            "SELECT reason, coalesce(sum(readings), 0) FROM ledger GROUP BY reason")}

    def _record(self, reason: LossReason, first: int | None, last: int | None,
                messages: int | None, readings: int | None, detail: str | None) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO ledger(at, reason, first_seq, last_seq, messages, readings, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._clock(), reason.value, first, last, messages, readings, detail))
        self.unreported += 1
        if reason not in (LossReason.BUFFER_CORRUPT,):
            log.warning("buffer: %s readings in messages %s..%s given up: %s (%s)",
                        readings, first, last, reason.value, detail)

    # limits ------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', 1)")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # closing must not hide the caller's own error
            log.warning("buffer checkpoint at close failed: %s", exc)
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def _limits(self) -> tuple[int | None, bool]:
        """Bytes that may still be stored under every limit (negative: over a limit; None:
        no limit applies), and whether the free-space guard is the tighter limit."""
        by_cap = self.max_bytes - self._used_bytes()
        if not self.min_free_bytes:
            return by_cap, False
        st = os.statvfs(self.path.parent)
        if st.f_bavail * st.f_frsize < self.min_free_bytes:
            # The WAL file (up to ~4 MiB before SQLite checkpoints it) is outside the pages
            # counted here and does not shrink by itself: below the guard, give its space
            # back before anything is evicted for want of space.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            st = os.statvfs(self.path.parent)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        spare = pages * self._page_size - self._used_bytes()  # free pages inside the file
        headroom = spare + st.f_bavail * st.f_frsize - self.min_free_bytes
        return min(by_cap, headroom), headroom < by_cap

    def _enforce_limits(self) -> None:
        """Evict by age, then the oldest batches while a limit is exceeded: telemetry
        first, events only when nothing else is left. Every eviction is ledgered."""
        if self.max_age_s is not None:
            cutoff = self._clock() - self.max_age_s
            while True:
                oldest = self._db.execute("SELECT seq, readings, created FROM batch "
                                          "ORDER BY seq LIMIT ?", (_EVICT_CHUNK,)).fetchall()
                expired = [(seq, n) for seq, n, created in oldest if created < cutoff]
                self._evict([r for r in expired if r[0] not in self.in_flight],
                            LossReason.EVICTED_BY_AGE, f"older than max_age_s={self.max_age_s:g}")
                if len(expired) < _EVICT_CHUNK:
                    break
        while True:
            room, short = self._limits()
            if room is None or room >= 0:
                return
            # drop_newest refused up front; block stops taking readings before the limit.
            # Both still evict to keep the free-space guard: the card must never fill.
            if self.policy is not OverflowPolicy.DROP_OLDEST and not short:
                return
            if self.thin and self.policy is not OverflowPolicy.BLOCK and self._thin_oldest():
                continue
            candidates = self._db.execute(
                "SELECT seq, readings, length(body) FROM batch ORDER BY kind, seq LIMIT ?",
                (_EVICT_CHUNK,)).fetchall()
            if all(c[0] in self.in_flight for c in candidates):
                return  # nothing stored, or only batches that may be delivered already
            # Only as many as cover the deficit: events must not go along with telemetry.
            rows: list[tuple[int, int]] = []
            freed = 0
            for seq, readings, size in candidates:
                if seq in self.in_flight:
                    continue
                rows.append((seq, readings))
                freed += size
                if freed >= -room:
                    break
            reason = LossReason.EVICTED_BY_FREE_SPACE if short else LossReason.EVICTED_BY_CAP
            self._evict(rows, reason, "min_free_bytes" if short else "max_bytes")

    def _thin_oldest(self) -> bool:
        """Thin the oldest telemetry batches not thinned yet (and older than
        ``thin.older_than_s``); False when none is left."""
        assert self.thin is not None
        rows = [r for r in self._db.execute(
            "SELECT seq, readings, body FROM batch WHERE thinned = 0 AND kind = 0 "
            "AND created < ? ORDER BY seq LIMIT ?",
            (self._clock() - self.thin.older_than_s, _THIN_CHUNK + len(self.in_flight)))
            if r[0] not in self.in_flight][:_THIN_CHUNK]
        if not rows:
            return False
        try:
            thinned = thin_bodies([zlib.decompress(body) for _, _, body in rows], self.thin)
        except (zlib.error, ValueError) as exc:
            # Left as they are (the forwarder ledgers an unreadable row when it reads it).
            log.error("cannot thin buffer rows %d..%d (%s): left as they are",
                      rows[0][0], rows[-1][0], exc)
            thinned = [(b"", readings) for _, readings, _ in rows]
        updates, removed = [], []
        for (seq, readings, body), (new_body, kept) in zip(rows, thinned, strict=True):
            if new_body and kept < readings:
                updates.append((seal(new_body), kept, seq))
                removed.append((seq, readings - kept))
            else:
                updates.append((body, readings, seq))
        with self._transaction():
            self._db.executemany("UPDATE batch SET body = ?, readings = ?, thinned = 1 "
                                 "WHERE seq = ?", updates)
        for first, last, messages, readings in _runs(removed):
            self._record(LossReason.THINNED, first, last, messages, readings,
                         self.thin.describe())
        return True

    def _evict(self, rows: list[tuple[int, int]], reason: LossReason, detail: str) -> None:
        if not rows:
            return
        with self._transaction():
            self._db.executemany("DELETE FROM batch WHERE seq = ?", [(r[0],) for r in rows])
        for first, last, messages, readings in _runs(rows):
            self._record(reason, first, last, messages, readings, detail)


def seal(body: bytes) -> bytes:
    """A body as the buffer stores it (compressed: SD cards wear by the byte)."""
    return zlib.compress(body, _COMPRESS_LEVEL)


def shift_timestamps(body: bytes, delta_s: float) -> bytes:
    """A stored body with every sample and event ``ts`` moved by ``delta_s`` seconds."""
    members = orjson.loads(b"{" + body + b"}")
    for item in (*members.get("samples", ()), *members.get("events", ())):
        item["ts"] = format_ts(parse_ts(item["ts"]) + delta_s)
    return orjson.dumps(members)[1:-1]


def _runs(rows: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Consecutive sequence numbers grouped into (first, last, messages, readings)."""
    out: list[tuple[int, int, int, int]] = []
    for seq, readings in sorted(rows):
        if out and out[-1][1] == seq - 1:
            first, _, messages, total = out[-1]
            out[-1] = (first, seq, messages + 1, total + readings)
        else:
            out.append((seq, seq, 1, readings))
    return out


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
