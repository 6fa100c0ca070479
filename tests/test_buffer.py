"""The SQLite buffer and its group-commit writer, on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from edge_agent.buffer import BufferStore, BufferWriter
from edge_agent.buffer.writer import QueueItem
from edge_agent.clock import ClockMonitor
from edge_agent.config import Durability, OverflowPolicy
from edge_agent.drivers.base import Quality, Sample
from edge_agent.telemetry.contract import DeviceEvent, Kind

NAMES = tuple(f"r{i}" for i in range(10))


def open_store(path: Path, max_bytes: int = 1 << 30, **limits: Any) -> BufferStore:
    return BufferStore(path, durability=Durability.FULL, max_bytes=max_bytes, **limits)


def test_sequence_numbers_survive_restart_and_are_never_reused(tmp_path: Path) -> None:
    """Sequence numbers continue after reopening, even when every batch was deleted."""
    store = open_store(tmp_path / "b.db")
    empty = (1, b'"samples":[]', Kind.TELEMETRY)
    assert store.append([empty, empty], created=0.0) == [1, 2]
    store.delete([1, 2])
    store.close()
    store = open_store(tmp_path / "b.db")
    assert store.stats().batches == 0
    assert store.append([(1, b'"samples":[]', Kind.TELEMETRY)], created=0.0) == [3]
    store.close()


def test_read_after_returns_batches_in_order_and_uncompressed(tmp_path: Path) -> None:
    """Stored bodies come back unchanged, oldest first, after a cursor."""
    store = open_store(tmp_path / "b.db")
    bodies = [(i + 1, f'"samples":[],"n":{i}'.encode(), Kind.TELEMETRY) for i in range(5)]
    store.append(bodies, created=1.0)
    got = store.read_after(2, 2)
    assert [(b.seq, b.readings, b.body) for b in got] == [(3, 3, bodies[2][1]),
                                                         (4, 4, bodies[3][1])]
    store.close()


def test_unsent_batches_survive_reopen(tmp_path: Path) -> None:
    """What was committed and not deleted is still there after the process closes it."""
    store = open_store(tmp_path / "b.db")
    store.append([(7, b'"samples":[]', Kind.TELEMETRY)] * 3, created=1.0)
    store.delete([2])
    store.close()
    store = open_store(tmp_path / "b.db")
    stats = store.stats()
    assert (stats.batches, stats.readings, stats.first_seq, stats.last_seq) == (2, 14, 1, 3)
    store.close()


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    """Past max_bytes the oldest batches are dropped, counted, and new ones are kept."""
    store = open_store(tmp_path / "b.db", max_bytes=1 << 20)
    import os

    for _ in range(40):  # incompressible bodies of 64 KiB: 2.5 MiB in all
        store.append([(100, os.urandom(65536), Kind.TELEMETRY)], created=1.0)
    stats = store.stats()
    assert stats.file_bytes <= 1 << 20
    assert stats.last_seq == 40 and stats.batches < 40
    evicted = 40 - stats.batches
    assert store.ledger_totals() == {"evicted_by_cap": 100 * evicted}
    entries = store.unreported_ledger()
    covered = {s for e in entries for s in range(e.first_seq or 0, (e.last_seq or 0) + 1)}
    assert covered == set(range(1, evicted + 1))  # exactly the evicted sequence numbers
    assert store.read_after(0, 1)[0].seq == evicted + 1
    store.close()


def sample(device: str, value: int) -> Sample:
    return Sample(device, 1_700_000_000.5, Quality.GOOD, NAMES, [value] * len(NAMES))


async def test_writer_group_commits_and_encodes(tmp_path: Path) -> None:
    """Items queued within one interval become one commit of message bodies."""
    store = open_store(tmp_path / "b.db")
    queue: asyncio.Queue[QueueItem] = asyncio.Queue(100)
    committed = asyncio.Event()
    with ThreadPoolExecutor(1) as executor:
        writer = BufferWriter(store, queue, executor=executor, commit_interval_s=0.05,
                              max_message_readings=25, on_commit=committed.set,
                              clock=ClockMonitor(wall=lambda: 0.0, monotonic=lambda: 0.0))
        for i in range(5):
            queue.put_nowait(sample("m", i))
        queue.put_nowait(DeviceEvent("m", 1_700_000_001.0, "unavailable", "timeout"))
        task = asyncio.create_task(writer.run())
        await committed.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert writer.commits == 1 and writer.accepted_readings == 51
    batches = store.read_after(0, 10)
    assert [b.readings for b in batches] == [1, 20, 20, 10]  # events first, on their own
    events = orjson.loads(b"{" + batches[0].body + b"}")
    assert events == {"samples": [], "events": [{
        "device": "m", "ts": "2023-11-14T22:13:21.000Z", "type": "device_state",
        "state": "unavailable", "detail": "timeout"}]}
    last = orjson.loads(b"{" + batches[-1].body + b"}")
    assert last["samples"][0]["values"]["r0"] == 4
    assert last["samples"][0]["ts"] == "2023-11-14T22:13:20.500Z"
    store.close()


async def test_writer_commits_queued_items_when_cancelled(tmp_path: Path) -> None:
    """On shutdown the writer commits what is still in the queue before it ends."""
    store = open_store(tmp_path / "b.db")
    queue: asyncio.Queue[QueueItem] = asyncio.Queue(100)
    with ThreadPoolExecutor(1) as executor:
        writer = BufferWriter(store, queue, executor=executor, commit_interval_s=3600,
                              max_message_readings=1000, on_commit=lambda: None)
        task = asyncio.create_task(writer.run())
        for i in range(3):
            await queue.put(sample("m", i))
        await asyncio.sleep(0)  # let the writer take the first item and start its window
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert store.stats().readings == 30
    store.close()


def incompressible(n: int = 1, size: int = 65536, kind: Kind = Kind.TELEMETRY
                   ) -> list[tuple[int, bytes, Kind]]:
    import os

    return [(100, os.urandom(size), kind) for _ in range(n)]


def test_events_are_evicted_only_after_telemetry(tmp_path: Path) -> None:
    """Under drop_oldest, telemetry goes before any event message, whatever its age."""
    store = open_store(tmp_path / "b.db", max_bytes=1 << 20)
    store.append(incompressible(1, 4096, Kind.EVENTS), created=1.0)  # the oldest message
    for _ in range(30):
        store.append(incompressible(), created=1.0)
    assert store.read_after(0, 1)[0].seq == 1  # the event survived
    assert "evicted_by_cap" in store.ledger_totals()
    store.close()


def test_drop_newest_refuses_but_numbers_and_ledgers(tmp_path: Path) -> None:
    """drop_newest keeps what is stored; refused batches still get sequence numbers, which
    the ledger lists, so the platform sees no unexplained gap."""
    store = open_store(tmp_path / "b.db", max_bytes=1 << 20, policy=OverflowPolicy.DROP_NEWEST)
    seqs = [s for _ in range(30) for s in store.append(incompressible(), created=1.0)]
    stored = {b.seq for b in store.read_after(0, 100)}
    refused = {s for e in store.unreported_ledger()
               for s in range(e.first_seq or 0, (e.last_seq or 0) + 1)}
    assert stored and refused and stored | refused == set(seqs) and not stored & refused
    assert min(refused) > max(stored)  # the oldest stayed
    assert {e.reason for e in store.unreported_ledger()} == {"refused_by_cap"}
    store.close()


def test_age_limit_evicts_old_batches(tmp_path: Path) -> None:
    """Batches older than max_age_s are evicted and ledgered; younger ones stay."""
    now = [1000.0]
    store = open_store(tmp_path / "b.db", max_age_s=60, clock=lambda: now[0])
    store.append([(5, b'"samples":[]', Kind.TELEMETRY)], created=900.0)
    store.append([(7, b'"samples":[]', Kind.TELEMETRY)], created=990.0)
    assert [b.seq for b in store.read_after(0, 10)] == [2]
    assert store.ledger_totals() == {"evicted_by_age": 5}
    store.close()


def test_free_space_guard_keeps_the_file_from_growing(tmp_path: Path) -> None:
    """With less free space than min_free_bytes allows, old batches are evicted so the
    file stops growing; the evictions are ledgered under the free-space reason."""
    import os

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    # The guard leaves 2 MiB of today's free space for the buffer (a real statvfs check on
    # the test's filesystem; no mount needed).
    store = open_store(tmp_path / "b.db", min_free_bytes=free - (2 << 20))
    for _ in range(80):  # 5 MiB of incompressible bodies
        store.append(incompressible(), created=1.0)
    assert (tmp_path / "b.db").stat().st_size < 3 << 20
    assert "evicted_by_free_space" in store.ledger_totals()
    assert store.stats().last_seq == 80
    store.close()


def test_corrupt_file_is_quarantined_and_the_sequence_goes_on(tmp_path: Path) -> None:
    """A damaged buffer is moved aside with a timestamped name, a fresh one starts, the
    sequence continues above every number handed out, and the ledger says what happened."""
    store = open_store(tmp_path / "b.db")
    store.append([(3, b'"samples":[]', Kind.TELEMETRY)] * 4, created=1.0)
    store.close()
    (tmp_path / "b.db").write_bytes(b"this is not a database" * 100)
    store = open_store(tmp_path / "b.db")
    assert store.quarantined is not None and store.quarantined.exists()
    assert store.quarantined.name.startswith("b.db.corrupt-")
    (entry,) = store.unreported_ledger()
    assert entry.reason == "buffer_corrupt" and entry.last_seq is not None
    assert entry.last_seq >= 4
    assert store.append([(1, b'"samples":[]', Kind.TELEMETRY)], created=1.0) == [
        entry.last_seq + 1]
    store.close()


def test_deleted_buffer_file_does_not_restart_the_sequence(tmp_path: Path) -> None:
    """If the buffer file disappears, the side reservation keeps numbers from repeating."""
    store = open_store(tmp_path / "b.db")
    store.append([(1, b'"samples":[]', Kind.TELEMETRY)] * 3, created=1.0)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"b.db{suffix}").unlink(missing_ok=True)
    store = open_store(tmp_path / "b.db")
    assert store.append([(1, b'"samples":[]', Kind.TELEMETRY)], created=1.0)[0] > 3
    store.close()


def test_unreadable_row_is_dropped_and_ledgered(tmp_path: Path) -> None:
    """A stored body that no longer decompresses is removed and recorded, not retried."""
    store = open_store(tmp_path / "b.db")
    store.append([(9, b'"samples":[]', Kind.TELEMETRY)] * 2, created=1.0)
    with sqlite3.connect(tmp_path / "b.db") as other:
        other.execute("UPDATE batch SET body = x'00ff' WHERE seq = 1")
    assert [b.seq for b in store.read_after(0, 10)] == [2]
    assert store.ledger_totals() == {"unreadable_row": 9}
    store.close()


def test_unclean_stop_with_normal_durability_skips_the_sequence(tmp_path: Path) -> None:
    """With durability normal a crash may roll commits back; on the next start the sequence
    jumps past the reserved numbers and the ledger says so. A clean stop does not jump."""
    def normal() -> BufferStore:
        return BufferStore(tmp_path / "b.db", durability=Durability.NORMAL, max_bytes=1 << 30)

    store = normal()
    store.append([(1, b'"samples":[]', Kind.TELEMETRY)] * 2, created=1.0)
    store.close()
    store = normal()
    assert store.append([(1, b'"samples":[]', Kind.TELEMETRY)], created=1.0) == [3]
    del store  # no close(): a crash
    store = normal()
    (entry,) = [e for e in store.unreported_ledger() if e.reason == "sequence_skipped"]
    assert entry.first_seq == 4 and entry.last_seq is not None and entry.last_seq > 4
    assert store.append([(1, b'"samples":[]', Kind.TELEMETRY)], created=1.0) == [
        entry.last_seq + 1]
    store.close()
