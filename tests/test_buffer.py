"""The SQLite buffer and its group-commit writer, on a real SQLite file."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from edge_agent.buffer import BufferStore, BufferWriter
from edge_agent.buffer.writer import QueueItem
from edge_agent.config import Durability
from edge_agent.drivers.base import Quality, Sample
from edge_agent.telemetry.contract import DeviceEvent

NAMES = tuple(f"r{i}" for i in range(10))


def open_store(path: Path, max_bytes: int = 1 << 30) -> BufferStore:
    return BufferStore(path, durability=Durability.FULL, max_bytes=max_bytes)


def test_sequence_numbers_survive_restart_and_are_never_reused(tmp_path: Path) -> None:
    """Sequence numbers continue after reopening, even when every batch was deleted."""
    store = open_store(tmp_path / "b.db")
    assert store.append([(1, b'"samples":[]'), (1, b'"samples":[]')], created=0.0) == [1, 2]
    store.delete([1, 2])
    store.close()
    store = open_store(tmp_path / "b.db")
    assert store.stats().batches == 0
    assert store.append([(1, b'"samples":[]')], created=0.0) == [3]
    store.close()


def test_read_after_returns_batches_in_order_and_uncompressed(tmp_path: Path) -> None:
    """Stored bodies come back unchanged, oldest first, after a cursor."""
    store = open_store(tmp_path / "b.db")
    bodies = [(i + 1, f'"samples":[],"n":{i}'.encode()) for i in range(5)]
    store.append(bodies, created=1.0)
    got = store.read_after(2, 2)
    assert [(b.seq, b.readings, b.body) for b in got] == [(3, 3, bodies[2][1]),
                                                         (4, 4, bodies[3][1])]
    store.close()


def test_unsent_batches_survive_reopen(tmp_path: Path) -> None:
    """What was committed and not deleted is still there after the process closes it."""
    store = open_store(tmp_path / "b.db")
    store.append([(7, b'"samples":[]')] * 3, created=1.0)
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
        store.append([(100, os.urandom(65536))], created=1.0)
    stats = store.stats()
    assert stats.file_bytes <= 1 << 20
    assert stats.last_seq == 40 and stats.batches < 40
    assert store.evicted_batches == 40 - stats.batches
    assert store.evicted_readings == 100 * store.evicted_batches
    assert store.read_after(0, 1)[0].seq == 40 - stats.batches + 1
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
                              max_message_readings=25, on_commit=committed.set)
        for i in range(5):
            queue.put_nowait(sample("m", i))
        queue.put_nowait(DeviceEvent("m", 1_700_000_001.0, "unavailable", "timeout"))
        task = asyncio.create_task(writer.run())
        await committed.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert writer.commits == 1 and writer.accepted_readings == 51
    batches = store.read_after(0, 10)
    assert [b.readings for b in batches] == [20, 20, 11]
    last = orjson.loads(b"{" + batches[-1].body + b"}")
    assert last["samples"][0]["values"]["r0"] == 4
    assert last["samples"][0]["ts"] == "2023-11-14T22:13:20.500Z"
    assert last["events"] == [{"device": "m", "ts": "2023-11-14T22:13:21.000Z",
                               "type": "device_state", "state": "unavailable",
                               "detail": "timeout"}]
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
