"""Fixed-rate polling of one device, with health tracking and reconnect backoff.

One task per device owns its driver connection, so a slow or dead device never delays
another one. Ticks are planned from the schedule (``anchor + k * interval``), not from
when the last poll ended, so polling does not drift; a tick that is already past when the
previous poll returns is skipped and counted, never burst. A failed read produces
bad-quality samples and a device-state event on the transition, then the device is
reopened with capped exponential backoff per consecutive failure (a device that accepts
connections but never answers is polled less and less often, up to ``reconnect_max_s``).
The device is *available* once a poll got an answer, *unavailable* after a failed poll or
open; each change is logged and reported once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.model import DeviceConfig
from edge_agent.drivers.base import DeviceError, DeviceUnavailable, Driver, Quality, Sample
from edge_agent.figures import RecentValues
from edge_agent.telemetry.contract import DeviceEvent

__all__ = ["DevicePoller", "DeviceStats", "PollGroup", "jitter_figures", "next_tick", "poll_groups"]

log = logging.getLogger(__name__)

READ_GUARD_S = 30.0
"""Upper bound of one poll of a group, whatever the driver's own timeouts say: a driver bug
must not stall the device's task forever."""

Sink = Callable[[Sample | DeviceEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Points of one device polled together at one interval."""

    interval_s: float
    names: tuple[str, ...]


def poll_groups(device: DeviceConfig) -> list[PollGroup]:
    """Group a device's points by poll interval, in configuration order."""
    by_interval: dict[float, list[str]] = {}
    for point in device.points:
        by_interval.setdefault(point.interval_s, []).append(point.name)
    return [PollGroup(interval, tuple(names)) for interval, names in by_interval.items()]


@dataclass(slots=True)
class DeviceStats:
    """Counters of one device, for logs and figures."""

    state: str = "starting"
    polls: int = 0
    failed_polls: int = 0
    skipped_ticks: int = 0
    reconnects: int = 0
    last_error: str | None = None
    late_s: RecentValues = field(default_factory=RecentValues)
    """Recent start delays of polls behind their planned tick (poll jitter)."""


class DevicePoller:
    """Polls one device's groups at fixed rates and feeds samples to the sink."""

    def __init__(self, device: DeviceConfig, driver: Driver, sink: Sink, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self._driver = driver
        self._sink = sink
        self._clock = clock
        self.groups = poll_groups(device)
        self._plans: list[Any] = [driver.plan(g.names) for g in self.groups]
        self.stats = DeviceStats()
        self._open = False
        self._failures = 0
        """Consecutive failed polls and opens; sets the backoff, reset by a good poll."""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._reopen()
            now = loop.time()
            # Anchor every group on a multiple of its interval: ticks of different groups
            # and gateways line up, and the schedule never depends on poll durations.
            heap = [(_next_multiple(now, g.interval_s), i) for i, g in enumerate(self.groups)]
            heapq.heapify(heap)
            while True:
                due, index = heap[0]
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                ok = await self._poll(index, loop.time() - due)
                if not ok:
                    await self._reopen()
                next_due, missed = next_tick(due, loop.time(), self.groups[index].interval_s)
                self.stats.skipped_ticks += missed
                heapq.heapreplace(heap, (next_due, index))
        finally:
            if self._open:
                await self._close()

    async def _poll(self, index: int, late_s: float) -> bool:
        """One poll of a group; False when the connection must be reopened."""
        group = self.groups[index]
        self.stats.polls += 1
        self.stats.late_s.add(late_s)
        try:
            async with asyncio.timeout(READ_GUARD_S):
                samples = await self._driver.read(self._plans[index])
        except (DeviceError, TimeoutError) as exc:
            reason = _reason(exc)
            self.stats.failed_polls += 1
            self.stats.last_error = reason
            await self._sink(Sample(self.device.name, self._clock(), Quality.BAD, group.names,
                                    [None] * len(group.names), reason))
            if isinstance(exc, DeviceUnavailable | TimeoutError):
                self._failures += 1
                await self._set_state("unavailable", reason)
                return False
            return True
        # The device answered: it is available, whatever the quality of single blocks.
        self._failures = 0
        await self._set_state("available", None)
        for sample in samples:
            await self._sink(sample)
        return True

    async def _reopen(self) -> None:
        """(Re)open the driver after a failure, backing off exponentially (with jitter) per
        consecutive failure, so a dead device costs little and never floods its link."""
        if self._open:
            await self._close()
        while True:
            if self._failures:
                await asyncio.sleep(self._backoff_s())
            try:
                await self._driver.open()
            except DeviceError as exc:
                self._failures += 1
                self.stats.reconnects += 1
                self.stats.last_error = _reason(exc)
                await self._set_state("unavailable", self.stats.last_error)
                continue
            self._open = True
            return

    def _backoff_s(self) -> float:
        delay = self.device.reconnect_initial_s * 2.0 ** min(self._failures - 1, 30)
        return float(min(delay, self.device.reconnect_max_s) * random.uniform(0.8, 1.2))

    async def _close(self) -> None:
        self._open = False
        try:
            await self._driver.close()
        except DeviceError as exc:  # a failing close must not stop the reconnect
            log.debug("device %s: close failed: %s", self.device.name, exc)

    async def _set_state(self, state: str, detail: str | None) -> None:
        """Log and report a state change once, on the transition only."""
        if state == self.stats.state:
            return
        previous, self.stats.state = self.stats.state, state
        if state == "available":
            log.info("device %s available%s", self.device.name,
                     "" if previous == "starting" else " again")
        else:
            log.warning("device %s unavailable: %s", self.device.name, detail)
        await self._sink(DeviceEvent(self.device.name, self._clock(), state, detail))


def next_tick(due: float, now: float, interval: float) -> tuple[float, int]:
    """The next planned tick after the one ``due`` that is still ahead of ``now``, and how
    many ticks were missed (passed while the last poll ran): skip, never burst."""
    next_due = due + interval
    if next_due > now:
        return next_due, 0
    missed = math.floor((now - next_due) / interval) + 1
    return next_due + missed * interval, missed


def _next_multiple(now: float, interval: float) -> float:
    return (math.floor(now / interval) + 1) * interval


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {READ_GUARD_S:.0f} s"
    return str(exc) or type(exc).__name__


def jitter_figures(late_s: RecentValues) -> tuple[float, float]:
    """p50 and p99 of poll start delays, in seconds."""
    return late_s.quantile(0.5), late_s.quantile(0.99)
