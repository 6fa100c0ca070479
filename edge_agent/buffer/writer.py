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

from edge_agent.drivers.base import Sample
from edge_agent.telemetry.contract import BodyBuilder, DeviceEvent, MessageBody

from .store import BufferStore, StoreError

__all__ = ["BufferWriter", "QueueItem"]

log = logging.getLogger(__name__)

QueueItem = Sample | DeviceEvent


class BufferWriter:
    """Owns the path queue -> SQLite. Run :meth:`run` as a task; cancel it to stop after
    a final drain (see :meth:`run`)."""

    def __init__(self, store: BufferStore, queue: asyncio.Queue[QueueItem], *,
                 executor: ThreadPoolExecutor, commit_interval_s: float,
                 max_message_readings: int, on_commit: Callable[[], None],
                 block_when_full: bool = False) -> None:
        self._store = store
        self._queue = queue
        self._executor = executor
        self._commit_interval_s = commit_interval_s
        self._builder = BodyBuilder(max_readings=max_message_readings)
        self._on_commit = on_commit
        self.accepted_readings = 0
        self.commits = 0
        self.failed_commits = 0
        self._committed = asyncio.Condition()
        self._block_when_full = block_when_full
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
                # Shielded: once handed to the store, a batch is committed even if the
                # writer is cancelled meanwhile (and the cancellation waits for it below).
                committing = asyncio.ensure_future(self._commit(self._builder.take()))
                await asyncio.shield(committing)
        except asyncio.CancelledError:
            if committing is not None and not committing.done():
                await committing
            while not self._queue.empty():
                self._builder.add(self._queue.get_nowait())
            bodies = self._builder.take()
            if bodies:
                await self._commit(bodies)
            raise

    async def _commit(self, bodies: list[MessageBody]) -> None:
        loop = asyncio.get_running_loop()
        readings = sum(b.readings for b in bodies)
        try:
            await loop.run_in_executor(self._executor, self._store_bodies, bodies)
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

    def _store_bodies(self, bodies: list[MessageBody]) -> None:
        self._store.append([(b.readings, b.body, b.kind) for b in bodies], created=time.time())

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
                await asyncio.sleep(self._commit_interval_s)
        finally:
            self.blocking.clear()
            self.blocked_s += loop.time() - started
        log.info("buffer has room again after %.1f s", loop.time() - started)

    async def wait_for_commits(self, count: int) -> None:
        """Return once at least ``count`` commits happened since start (for tests and tools)."""
        async with self._committed:
            await self._committed.wait_for(lambda: self.commits >= count)
