"""The scheduler: drift-free ticks, skips on overrun, backoff and device-state events.

The driver here is a scripted in-memory stand-in: these tests pin the scheduler's own
decisions (what it emits on failure, when it reopens). The Modbus driver against a real
server is covered in test_modbus_driver.py and test_end_to_end.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from edge_agent.config import DeviceConfig, PointBase
from edge_agent.drivers.base import DeviceTimeout, DeviceUnavailable, Quality, Sample
from edge_agent.scheduler.poller import DevicePoller, next_tick, poll_groups
from edge_agent.telemetry.contract import DeviceEvent


@pytest.mark.parametrize(
    ("due", "now", "interval", "expected"),
    [
        (10.0, 10.2, 1.0, (11.0, 0)),  # poll finished in time: next planned tick
        (10.0, 11.0, 1.0, (12.0, 1)),  # finished exactly on the next tick: skip it
        (10.0, 13.5, 1.0, (14.0, 3)),  # overran three ticks: skip 3, no burst
        (0.0, 0.26, 0.25, (0.5, 1)),
    ],
)
def test_next_tick_is_planned_from_the_schedule(
        due: float, now: float, interval: float, expected: tuple[float, int]) -> None:
    """The next tick is due + k*interval, never now + interval; passed ticks are counted."""
    assert next_tick(due, now, interval) == expected


def test_points_are_grouped_by_interval() -> None:
    """Points with the same interval form one poll group, in configuration order."""
    device = DeviceConfig(name="d", driver="x", connection=None, points=(
        PointBase(name="a", interval_s=1.0), PointBase(name="b", interval_s=5.0),
        PointBase(name="c", interval_s=1.0)))
    assert [(g.interval_s, g.names) for g in poll_groups(device)] == [
        (1.0, ("a", "c")), (5.0, ("b",))]


class ScriptedDriver:
    """Opens and reads according to a script of outcomes (values or exceptions)."""

    def __init__(self, opens: list[Exception | None], reads: list[Exception | int]) -> None:
        self.opens = opens
        self.reads = reads
        self.open_calls = 0
        self.close_calls = 0

    def plan(self, point_names: Sequence[str]) -> tuple[str, ...]:
        return tuple(point_names)

    async def open(self) -> None:
        self.open_calls += 1
        outcome = self.opens.pop(0) if self.opens else None
        if outcome is not None:
            raise outcome

    async def read(self, plan: Any) -> list[Sample]:
        outcome = self.reads.pop(0) if self.reads else 0
        if isinstance(outcome, Exception):
            raise outcome
        return [Sample("dev", 1.0, Quality.GOOD, plan, [outcome] * len(plan))]

    async def close(self) -> None:
        self.close_calls += 1


async def collect(driver: ScriptedDriver, count: int) -> list[Sample | DeviceEvent]:
    device = DeviceConfig(name="dev", driver="x", connection=None,
                          points=(PointBase(name="a", interval_s=0.01),),
                          reconnect_initial_s=0.01, reconnect_max_s=0.02)
    queue: asyncio.Queue[Sample | DeviceEvent] = asyncio.Queue()
    poller = DevicePoller(device, driver, queue.put)
    task = asyncio.create_task(poller.run())
    items = [await queue.get() for _ in range(count)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return items


async def test_failed_read_gives_bad_samples_and_one_state_event() -> None:
    """A timeout yields a bad sample, one 'unavailable' event, a reopen and 'available'."""
    driver = ScriptedDriver(opens=[None, DeviceUnavailable("refused"),
                                   DeviceUnavailable("refused"), None],
                            reads=[5, DeviceTimeout("no answer within 1.0 s"), 6])
    items = await collect(driver, 6)
    kinds = [(i.state, i.detail) if isinstance(i, DeviceEvent) else (i.quality, i.values[0])
             for i in items]
    assert kinds == [
        ("available", None),
        (Quality.GOOD, 5),
        (Quality.BAD, None),
        ("unavailable", "no answer within 1.0 s"),  # once, despite two failed reopens
        ("available", None),
        (Quality.GOOD, 6),
    ]
    bad = items[2]
    assert isinstance(bad, Sample) and bad.reason == "no answer within 1.0 s"
    assert driver.open_calls == 4
    assert driver.close_calls == 2  # once before reopening, once when the task stopped


async def test_unavailable_at_start_is_reported_then_recovers() -> None:
    """A device down at start is reported unavailable, then available when it answers."""
    driver = ScriptedDriver(opens=[DeviceUnavailable("connection refused"), None], reads=[1])
    items = await collect(driver, 3)
    assert [(i.state, i.detail) for i in items[:2] if isinstance(i, DeviceEvent)] == [
        ("unavailable", "connection refused"), ("available", None)]
    assert isinstance(items[2], Sample) and items[2].values == [1]
