"""Readings taken before the clock is trusted are held, corrected, or sent flagged."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from edge_agent.agent import Agent
from edge_agent.buffer import BufferStore
from edge_agent.clock import ClockMonitor
from edge_agent.config import AgentConfig, Durability
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.watch import Received, Watcher
from edge_agent.telemetry.contract import Kind, batches_of, parse_ts

TOPIC = "city/town/gw-e2e/telemetry"
TEN_YEARS_S = 10 * 365 * 86400


def test_monitor_detects_steps_and_sync() -> None:
    """A change of wall-minus-monotonic over 1 s is a step; trust follows the sync source."""
    wall, mono, synced = [1000.0], [10.0], [False]
    monitor = ClockMonitor(synchronized=lambda: synced[0], wall=lambda: wall[0],
                           monotonic=lambda: mono[0])
    assert (monitor.trusted, monitor.offset) == (False, 990.0)
    mono[0], wall[0] = 11.0, 1001.2  # drift of 0.2 s: not a step
    assert monitor.check() is False and monitor.steps == 0
    wall[0], synced[0] = 5000.0, True
    assert monitor.check() is True and monitor.steps == 1 and monitor.offset == 4989.0


def held_store(tmp_path: Path) -> BufferStore:
    store = BufferStore(tmp_path / "b.db", durability=Durability.FULL, max_bytes=1 << 30)
    body = b'"samples":[{"device":"d","ts":"2016-01-01T00:00:00.250Z","quality":"good",' \
           b'"values":{"a":1}}]'
    store.append([(1, body, Kind.TELEMETRY)], created=1.0)  # trusted
    store.append([(1, body, Kind.TELEMETRY)], created=1.0, clock_offset=100.0)  # held
    store.append([(1, body, Kind.TELEMETRY)], created=1.0)  # after it: waits too
    return store


def test_held_batches_block_the_stream_until_corrected(tmp_path: Path) -> None:
    """Nothing from the first held batch on is handed out; correction shifts its
    timestamps by the clock's error and releases everything in order."""
    store = held_store(tmp_path)
    assert [b.seq for b in store.read_after(0, 10)] == [1]
    assert store.correct_clock(100.0 + 3600.5) == 1
    batches = store.read_after(0, 10)
    assert [b.seq for b in batches] == [1, 2, 3]
    fixed = orjson.loads(b"{" + batches[1].body + b"}")["samples"][0]["ts"]
    assert fixed == "2016-01-01T01:00:00.750Z"
    assert not any(b.clock_unsynchronized for b in batches)
    store.close()


def test_batches_that_cannot_be_corrected_are_released_flagged(tmp_path: Path) -> None:
    """Giving up (or a held batch from an earlier boot) releases batches flagged."""
    store = held_store(tmp_path)
    assert store.flag_held() == 1
    assert [(b.seq, b.clock_unsynchronized) for b in store.read_after(0, 10)] == [
        (1, False), (2, True), (3, False)]
    store.close()
    store = held_store(tmp_path / "again")
    store.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "again" / "b.db") as db:
        db.execute("UPDATE batch SET boot_id = 'an-earlier-boot' WHERE seq = 2")
    store = BufferStore(tmp_path / "again" / "b.db", durability=Durability.FULL,
                        max_bytes=1 << 30)
    assert [b.clock_unsynchronized for b in store.read_after(0, 10)] == [False, True, False]
    store.close()


def telemetry(messages: list[Received]) -> list[dict[str, Any]]:
    """The batches received (a message may carry several)."""
    return [b for m in messages if m.topic == TOPIC for b in batches_of(orjson.loads(m.payload))]


async def test_readings_before_sync_arrive_with_corrected_timestamps(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """A gateway that boots ten years behind holds its readings; when NTP syncs (the wall
    clock steps), the held timestamps are corrected before anything is sent."""
    error, synced = [-TEN_YEARS_S], [False]
    clock = ClockMonitor(synchronized=lambda: synced[0],
                         wall=lambda: time.time() + error[0])
    seen = watcher(broker, TOPIC)
    started = time.time()
    async with Agent(make_config(), clock=clock) as agent:
        assert agent.writer is not None and agent.store is not None
        await agent.writer.wait_for_commits(3)
        assert agent.store.held() > 0 and not telemetry(seen.messages)
        held_up_to = agent.store.last_seq
        error[0], synced[0] = 0, True  # NTP steps the clock to the right time
        messages = await seen.wait_until_async(
            lambda ms: held_up_to in [b["seq"] for b in telemetry(ms)],
            what="the held messages after sync")
    batches = telemetry(messages)
    numbers = sorted({b["seq"] for b in batches})
    assert numbers == list(range(1, numbers[-1] + 1))
    stamps = [parse_ts(s["ts"]) for b in batches for s in b["samples"]]
    assert stamps and all(started - 1 <= t <= time.time() + 1 for t in stamps)
    assert not any("clock" in b for b in batches)


async def test_no_sync_within_max_hold_sends_flagged(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """Without sync for max_hold_s, held readings go out flagged clock: unsynchronized."""
    config = make_config()
    config = dataclasses.replace(config, clock=dataclasses.replace(config.clock,
                                                                   max_hold_s=0.0))
    clock = ClockMonitor(synchronized=lambda: False)
    seen = watcher(broker, TOPIC)
    async with Agent(config, clock=clock):
        messages = await seen.wait_for_async(2)
    assert all(d.get("clock") == "unsynchronized" for d in telemetry(messages))
