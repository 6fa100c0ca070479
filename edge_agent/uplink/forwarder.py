"""The forwarder: stored batches -> MQTT, deleted only after the broker's PUBACK.

It is the one retry owner of the uplink: connections are opened with exponential backoff
and jitter (tenacity) and never reconnect by themselves. Within a connection it keeps up
to ``max_inflight`` messages unacknowledged, in sequence order. A batch is deleted from
the buffer only once its PUBACK arrived; when a connection drops, everything not yet
acknowledged is sent again on the next one, with the same sequence numbers (at-least-once,
duplicates bounded by the window).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from edge_agent.buffer.store import BufferStore, StoredBatch
from edge_agent.config.model import UplinkConfig
from edge_agent.telemetry.contract import Topics, envelope, ledger_payload, status_payload

from .errors import PublishRejected, UplinkError

__all__ = ["Connection", "Forwarder"]

log = logging.getLogger(__name__)

_STABLE_AFTER_S = 30.0
"""A connection that lived this long resets the reconnect backoff to its initial delay."""
_DELETE_EVERY_S = 0.25
"""Acknowledged batches are deleted in groups: one commit per group, not per message."""


class Connection(Protocol):
    """What the forwarder needs of one MQTT connection (see :class:`MqttConnection`)."""

    async def __aenter__(self) -> Connection: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> asyncio.Future[None]: ...

    async def wait_closed(self) -> None: ...


class _SessionEnded(Exception):
    """A long-lived connection dropped: start the backoff from the beginning."""


class Forwarder:
    """Owns the path SQLite -> broker. Run :meth:`run` as a task."""

    def __init__(self, store: BufferStore, *, executor: ThreadPoolExecutor,
                 config: UplinkConfig, gateway: str, site: str, topics: Topics,
                 connect: Callable[[], Connection],
                 on_deleted: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._executor = executor
        self._config = config
        self._gateway = gateway
        self._site = site
        self._topics = topics
        self._connect = connect
        self._on_deleted = on_deleted
        self._backoff = wait_exponential_jitter(multiplier=config.reconnect_initial_s,
                                                max=config.reconnect_max_s,
                                                jitter=config.reconnect_initial_s)
        self._wake = asyncio.Event()
        """Set on every commit and every acknowledgement: the pump has work to look at."""
        self._acked: list[int] = []
        self._rejected: list[tuple[int, int, str]] = []
        self._ledger_acked: list[int] = []
        self._ledger_sending = False
        self._idle = asyncio.Event()
        self.connected = False
        self.published = 0
        self.acked_messages = 0
        self.acked_readings = 0

    def notify(self) -> None:
        """Called by the writer after each commit."""
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        while True:
            retrying = AsyncRetrying(
                wait=self._wait,
                retry=retry_if_exception_type(UplinkError),
                before_sleep=self._log_retry,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._session()
            except _SessionEnded:
                continue

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter; straight to the maximum delay for errors that
        need someone to change a certificate or the broker (they are still retried: the
        agent keeps buffering and must reconnect by itself once that is fixed)."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, UplinkError) and not exc.retryable:
            return self._config.reconnect_max_s
        return float(self._backoff(state))

    async def wait_drained(self) -> None:
        """Return once the buffer was seen empty with nothing in flight (for shutdown)."""
        await self._idle.wait()

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        level = logging.ERROR if state.attempt_number == 1 else logging.DEBUG
        if self.connected or state.attempt_number == 1:
            log.log(level, "uplink %s:%d unavailable: %s; retrying with backoff "
                    "(next in %.1f s)", self._config.host, self._config.port, exc, delay)
        elif state.attempt_number % 10 == 0:
            log.warning("uplink still unavailable after %d attempts: %s",
                        state.attempt_number, exc)
        self.connected = False

    async def _session(self) -> None:
        started = time.monotonic()
        try:
            async with self._connect() as conn:
                self.connected = True
                await conn.publish(self._topics.status, status_payload(
                    gateway=self._gateway, site=self._site, state="online"), retain=True)
                try:
                    await self._pump(conn)
                except asyncio.CancelledError:
                    await self._goodbye(conn)
                    raise
        except asyncio.CancelledError:
            await asyncio.shield(self._flush_acks())
            raise
        except UplinkError:
            await self._flush_acks()
            if time.monotonic() - started >= _STABLE_AFTER_S:
                log.warning("uplink connection lost; reconnecting")
                self.connected = False
                raise _SessionEnded from None
            raise

    async def _goodbye(self, conn: Connection) -> None:
        """Clean shutdown: a retained ``offline`` status (the will only covers crashes)."""
        payload = status_payload(gateway=self._gateway, site=self._site, state="offline",
                                 reason="shutdown")
        try:
            async with asyncio.timeout(2.0):
                await conn.publish(self._topics.status, payload, retain=True)
        except (UplinkError, TimeoutError, RuntimeError) as exc:
            # RuntimeError: the in-flight window is full; the will covers it on disconnect.
            log.debug("could not publish offline status at shutdown: %s", exc)

    async def _pump(self, conn: Connection) -> None:
        """Publish stored batches in sequence order.

        The window counts every message sent and not yet *deleted*: unacknowledged ones and
        acknowledged ones whose deletion is still to be committed. Both would be sent again
        after a crash, so keeping their sum within ``max_inflight`` is what bounds the
        duplicates per crash. Deletions are committed in groups (half a window, or every
        ``_DELETE_EVERY_S``) so the card is not written once per message.
        """
        loop = asyncio.get_running_loop()
        # One slot of the window stays free for the ledger and status messages.
        limit = max(1, self._config.max_inflight - 1)
        flush_at = max(1, limit // 2)
        inflight: set[asyncio.Future[None]] = set()
        self._ledger_sending = False
        closed = asyncio.ensure_future(conn.wait_closed())
        cursor = 0
        last_flush = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                settled = len(self._acked) + len(self._rejected)
                if settled >= flush_at or self._ledger_acked or (
                        settled and now - last_flush >= _DELETE_EVERY_S):
                    await self._flush_acks()
                    last_flush = now
                self._wake.clear()
                if self._store.unreported and not self._ledger_sending:
                    await self._send_ledger(conn)
                batches: list[StoredBatch] = []
                free = limit - len(inflight) - len(self._acked) - len(self._rejected)
                if free > 0:
                    batches = await loop.run_in_executor(
                        self._executor, self._store.read_after, cursor, free)
                if not batches:
                    if self._acked or self._rejected:
                        await self._flush_acks()  # the window is full or the buffer empty
                        last_flush = time.monotonic()
                        continue
                    if not inflight:
                        self._idle.set()
                    # Sleep until a commit, an acknowledgement or the end of the connection.
                    waiter = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait((closed, waiter), return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if closed.done():
                        closed.result()
                    continue
                self._idle.clear()
                for batch in batches:
                    future = conn.publish(self._topics.telemetry, self._payload(batch))
                    inflight.add(future)
                    future.add_done_callback(
                        functools.partial(self._on_done, batch=batch, inflight=inflight))
                    cursor = batch.seq
                    self.published += 1
        finally:
            closed.cancel()
            for future in inflight:
                future.cancel()

    async def _send_ledger(self, conn: Connection) -> None:
        """Report what the buffer gave up (sequence ranges and reasons) to the platform;
        entries are marked reported only after the broker's PUBACK."""
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(self._executor, self._store.unreported_ledger)
        if not entries:
            return
        totals = await loop.run_in_executor(self._executor, self._store.ledger_totals)
        payload = ledger_payload(gateway=self._gateway, site=self._site, entries=entries,
                                 totals=totals)
        future = conn.publish(self._topics.ledger, payload)
        self._ledger_sending = True
        ids = [e.id for e in entries]

        def done(f: asyncio.Future[None]) -> None:
            self._ledger_sending = False
            if not f.cancelled() and f.exception() is None:
                self._ledger_acked.extend(ids)
            self._wake.set()

        future.add_done_callback(done)

    def _payload(self, batch: StoredBatch) -> bytes:
        return envelope(gateway=self._gateway, site=self._site, seq=batch.seq, body=batch.body,
                        clock_unsynchronized=batch.clock_unsynchronized)

    def _on_done(self, future: asyncio.Future[None], *, batch: StoredBatch,
                 inflight: set[asyncio.Future[None]]) -> None:
        inflight.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._acked.append(batch.seq)
            self.acked_messages += 1
            self.acked_readings += batch.readings
        elif isinstance(exc, PublishRejected):
            # The broker will never take this message (e.g. not authorised): keep the rest
            # flowing, and account for it in the loss ledger (which also logs it).
            self._rejected.append((batch.seq, batch.readings, str(exc)))
        # UplinkDisconnected: the batch stays stored and is sent on the next connection.
        self._wake.set()

    async def _flush_acks(self) -> None:
        if not (self._acked or self._rejected or self._ledger_acked):
            return
        acked, self._acked = self._acked, []
        rejected, self._rejected = self._rejected, []
        reported, self._ledger_acked = self._ledger_acked, []
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._settle, acked, rejected, reported)
        self._on_deleted()

    def _settle(self, acked: list[int], rejected: list[tuple[int, int, str]],
                reported: list[int]) -> None:
        """On the store's thread: forget what was delivered or refused for good."""
        for seq, readings, detail in rejected:
            self._store.record_rejected(seq, readings, detail)
        self._store.delete(acked + [seq for seq, _, _ in rejected])
        if reported:
            self._store.mark_reported(reported)
