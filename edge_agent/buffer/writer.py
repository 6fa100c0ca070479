"""The writer: drains the bounded in-memory queue into the SQLite buffer by group commit.

Pollers put samples and device events on a bounded :class:`asyncio.Queue`; when it is full
they wait, which is the backpressure that keeps memory bounded. The writer takes whatever
arrived during one commit interval, encodes it into message bodies and commits them in
one transaction on the store's own thread. A reading counts as accepted once that
transaction committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeAlias

from edge_agent.clock import STEP_THRESHOLD_S, ClockMonitor
from edge_agent.drivers.base import Sample
from edge_agent.telemetry.contract import BodyBuilder, DeviceEvent, MessageBody

from .store import BufferStore, StoreError, seal

__all__ = ["BufferWriter", "QueueItem"]

log = logging.getLogger(__name__)

QueueItem: TypeAlias = Sample | DeviceEvent


class _ClockTag(NamedTuple):
    held_offset: float | None
    """Offset the window's timestamps were made with, when they are not trusted."""
    correct_with: float | None
    """Trusted offset to correct held timestamps with, once the clock can be trusted."""
    give_up: bool
    """No trusted clock for too long: release held batches, flagged."""


class BufferWriter:
    """Owns the path queue -> SQLite. Run :meth:`run` as a task; cancel it to stop after
    a final drain (see :meth:`run`)."""

    def __init__(self, store: BufferStore, queue: asyncio.Queue[QueueItem], *,
                 executor: ThreadPoolExecutor, commit_interval_s: float,
                 max_message_readings: int, on_commit: Callable[[], None],
                 block_when_full: bool = False, clock: ClockMonitor | None = None,
                 max_hold_s: float = 600.0) -> None:
        self._store = store
        self._queue = queue
        self._executor = executor
        self._commit_interval_s = commit_interval_s
        self._clock = clock or ClockMonitor()
        self._max_hold_s = max_hold_s
        self._untrusted_since: float | None = None
        self._builder = BodyBuilder(max_readings=max_message_readings,
                                    offset=self._clock.offset, seal=seal)
        self._window_trusted = self._clock.trusted
        self._on_commit = on_commit
        self.accepted_readings = 0
        self.commits = 0
        self.failed_commits = 0
        self._committed = asyncio.Condition()
        self._block_when_full = block_when_full
        self._room_freed = asyncio.Event()
        self.blocking = asyncio.Event()
        """Set while the writer holds polling back because the buffer is full."""
        self.blocked_s = 0.0
        """Time the writer held polling back because the buffer was full (policy block)."""

    async def run(self) -> None:
        """Commit once per interval while items arrive. On cancellation, whatever is
        already queued or encoded is committed before the cancellation propagates."""
        loop = asyncio.get_running_loop()
        committing: asyncio.Future[None] | None = None
        try:
            while True:
                if self._block_when_full:
                    await self._wait_for_room()
                self._builder.add(await self._queue.get())
                # Group-commit window: encode what the pollers deliver for one interval.
                try:
                    async with asyncio.timeout_at(loop.time() + self._commit_interval_s):
                        while True:
                            self._builder.add(await self._queue.get())
                except TimeoutError:
                    pass
                bodies, tag = self._builder.take(), self._clock_tag()
                # One commit at a time, in order; the next window is encoded while this one
                # commits, so a slow card does not leave samples queued as Python objects
                # (they are several times larger than their encoded bytes) or stall polling.
                if committing is not None:
                    await asyncio.shield(committing)
                # Shielded: once handed to the store, a batch is committed even if the
                # writer is cancelled meanwhile (and the cancellation waits for it below).
                committing = asyncio.ensure_future(self._commit(bodies, tag))
        except asyncio.CancelledError:
            if committing is not None and not committing.done():
                await committing
            while not self._queue.empty():
                self._builder.add(self._queue.get_nowait())
            bodies = self._builder.take()
            if bodies:
                await self._commit(bodies, self._clock_tag())
            raise

    def _clock_tag(self) -> _ClockTag:
        """Close the window's clock: re-read the clock, and say whether the timestamps
        just encoded (with ``builder.offset``) are trustworthy, or must be held and
        corrected. The next window encodes with the offset in force now."""
        clock = self._clock
        used, trusted_before = self._builder.offset, self._window_trusted
        clock.check()
        stepped = abs(clock.offset - used) > STEP_THRESHOLD_S
        held_offset = used if (stepped or not trusted_before or not clock.trusted) else None
        self._builder.offset, self._window_trusted = clock.offset, clock.trusted
        now = time.monotonic()
        if clock.trusted:
            self._untrusted_since = None
        elif self._untrusted_since is None:
            self._untrusted_since = now
        give_up = (self._untrusted_since is not None
                   and now - self._untrusted_since > self._max_hold_s)
        correct = clock.offset if clock.trusted and (held_offset is not None
                                                     or stepped) else None
        return _ClockTag(held_offset, correct, give_up)

    async def _commit(self, bodies: list[MessageBody], tag: _ClockTag) -> None:
        loop = asyncio.get_running_loop()
        readings = sum(b.readings for b in bodies)
        try:
            await loop.run_in_executor(self._executor, self._store_bodies, bodies, tag)
        except StoreError as exc:
            # These readings were never accepted. Say so loudly: this is a full disk or a
            # broken card, and nothing else can be done here.
            self.failed_commits += 1
            log.error("could not commit %d readings to the buffer: %s", readings, exc)
            return
        self.accepted_readings += readings
        self.commits += 1
        self._on_commit()
        async with self._committed:
            self._committed.notify_all()

    def _store_bodies(self, bodies: list[MessageBody], tag: _ClockTag) -> None:
        self._store.append([(b.readings, b.body, b.kind) for b in bodies], created=time.time(),
                           clock_offset=tag.held_offset, sealed=True)
        if tag.correct_with is not None:
            fixed = self._store.correct_clock(tag.correct_with)
            if fixed:
                log.info("corrected the timestamps of %d held messages", fixed)
        elif tag.give_up:
            flagged = self._store.flag_held()
            if flagged:
                log.warning("clock still not synchronised after %.0f s: %d held messages "
                            "sent flagged 'clock: unsynchronized'", self._max_hold_s, flagged)

    async def _wait_for_room(self) -> None:
        """Policy ``block``: take nothing from the queue while the buffer is full, so the
        queue fills and the pollers wait (their skipped ticks show the slowdown)."""
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._executor, self._store.full):
            return
        log.warning("buffer full: holding polling back until the uplink frees room "
                    "(policy block)")
        started = loop.time()
        self.blocking.set()
        try:
            while await loop.run_in_executor(self._executor, self._store.full):
                self._room_freed.clear()
                await self._room_freed.wait()
        finally:
            self.blocking.clear()
            self.blocked_s += loop.time() - started
        log.info("buffer has room again after %.1f s", loop.time() - started)

    def room_freed(self) -> None:
        """Called when batches were deleted (delivered or given up): re-check the limits."""
        self._room_freed.set()

    async def wait_for_commits(self, count: int) -> None:
        """Return once at least ``count`` commits happened since start (for tests and tools)."""
        async with self._committed:
            await self._committed.wait_for(lambda: self.commits >= count)
