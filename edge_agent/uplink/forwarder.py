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

from edge_agent.buffer.store import BufferStore, LedgerEntry, StoredBatch
from edge_agent.config.model import DrainOrder, UplinkConfig
from edge_agent.telemetry.contract import (
    ENVELOPE_OVERHEAD,
    Topics,
    ledger_payload,
    status_payload,
    telemetry_message,
)

from .errors import PublishRejected, UplinkError, UplinkRefused
from .mqtt import RETAIN_NOT_SUPPORTED, BrokerLimits

__all__ = ["Connection", "Forwarder"]

log = logging.getLogger(__name__)

_STABLE_AFTER_S = 30.0
"""A connection that lived this long resets the reconnect backoff to its initial delay."""
_DELETE_EVERY_S = 0.25
"""Acknowledged batches are deleted in groups: one commit per group, not per message."""
_BATCHES_PER_MESSAGE = 256
"""At most this many stored batches are coalesced into one message (besides the size)."""


class Connection(Protocol):
    """What the forwarder needs of one MQTT connection (see :class:`MqttConnection`)."""

    async def __aenter__(self) -> Connection: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> asyncio.Future[None]: ...

    async def wait_closed(self) -> None: ...

    @property
    def limits(self) -> BrokerLimits: ...


class _SessionEnded(Exception):
    """A long-lived connection dropped: start the backoff from the beginning."""


class _Drain:
    """Which stored batches go out next, in the configured order.

    ``oldest_first``: one cursor in sequence order. ``live_first``: what was stored when the
    connection came up (or what fell behind by ``historical_after_s`` since) is the backlog,
    below ``boundary``; batches above it are live and go first, the backlog fills the rest
    of the window. Used on the store's thread, while the pump waits for it.
    """

    def __init__(self, order: DrainOrder, *, last_seq: int, lag_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.live_first = order is DrainOrder.LIVE_FIRST
        self.boundary = last_seq if self.live_first else 0
        self.live_after = self.boundary
        self.backlog_after = 0
        self._lag_s = lag_s
        self._clock = clock
        """Wall time, as the store's ``created``."""

    def next(self, store: BufferStore, *, batches: int, max_bytes: int,
             pending: set[int]) -> list[StoredBatch]:
        """The batches of the next message (consecutive in one stream), or none."""
        group = store.read_after(self.live_after, batches, max_bytes=max_bytes)
        if self.live_first and group and group[0].created < self._clock() - self._lag_s:
            # Live data fell behind (the broker is slower than the devices): what waits
            # becomes backlog and live restarts at the newest commit.
            self.boundary = self.live_after = store.last_seq
            group = []
        if group:
            self.live_after = group[-1].seq
            return group
        if self.backlog_after >= self.boundary:
            return []
        # Batches sent from the live stream before the boundary moved are still in flight
        # (or acknowledged, not yet deleted): they must not go out twice.
        group = store.read_after(self.backlog_after, batches, upto=self.boundary,
                                 max_bytes=max_bytes, skip=pending)
        if group:
            self.backlog_after = group[-1].seq
        return group


class Forwarder:
    """Owns the path SQLite -> broker. Run :meth:`run` as a task."""

    def __init__(self, store: BufferStore, *, executor: ThreadPoolExecutor,
                 config: UplinkConfig, gateway: str, site: str, topics: Topics,
                 connect: Callable[..., Connection],
                 on_deleted: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._executor = executor
        self._config = config
        self._gateway = gateway
        self._site = site
        self._topics = topics
        self._connect = connect
        """Opens a connection: ``connect(will_retain=...)``."""
        self._will_retain = True
        """False once a broker refused a retained will (it has no retained messages)."""
        self._on_deleted = on_deleted
        self._backoff = wait_exponential_jitter(multiplier=config.reconnect_initial_s,
                                                max=config.reconnect_max_s,
                                                jitter=config.reconnect_initial_s)
        self._wake = asyncio.Event()
        """Set on every commit and every acknowledgement: the pump has work to look at."""
        self._acked: list[int] = []
        """Sequence numbers of acknowledged batches, to delete at the next flush."""
        self._rejected: list[tuple[list[tuple[int, int]], str]] = []
        """Messages the broker refused for good: their (seq, readings) and the reason."""
        self._settled = 0
        """Messages acknowledged or refused and not yet flushed (they count in the window)."""
        self._pending: set[int] = set()
        """Sequence numbers sent on this connection and not yet deleted."""
        self._ledger_acked: list[int] = []
        self._ledger_sending = False
        self._idle = asyncio.Event()
        self.connected = False
        self.published = 0
        self.coalesced = 0
        """Messages that carried more than one stored batch."""
        self.peak_inflight = 0
        """Most telemetry messages unacknowledged at once (the window actually used)."""
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
            async with self._connect(will_retain=self._will_retain) as conn:
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
        except UplinkError as exc:
            await self._flush_acks()
            if (isinstance(exc, UplinkRefused) and exc.reason_code == RETAIN_NOT_SUPPORTED
                    and self._will_retain):
                # MQTT 5: a broker without retained messages refuses a retained will. The
                # status topic then works without retain: say so, and connect again now.
                log.warning("broker %s:%d has no retained messages: the status topic and "
                            "the last will are sent without retain", self._config.host,
                            self._config.port)
                self._will_retain = False
                raise _SessionEnded from None
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
        """Publish stored batches in the configured order.

        The window counts every message sent and not yet *deleted*: unacknowledged ones and
        acknowledged ones whose deletion is still to be committed. Both would be sent again
        after a crash, so keeping their sum within ``max_inflight`` (and the broker's
        Receive Maximum) is what bounds the duplicates per crash. Deletions are committed in
        groups (half a window, or every ``_DELETE_EVERY_S``) so the card is not written once
        per message.

        When more batches wait than the window has room for, the last free slot takes as
        many consecutive ones as fit in ``max_message_bytes``: a slow broker gets fewer,
        larger messages, not more of them, and the window's memory stays bounded whatever
        the backlog.
        """
        loop = asyncio.get_running_loop()
        limits = conn.limits
        # One slot of the window stays free for the ledger and status messages.
        limit = max(1, min(self._config.max_inflight, limits.receive_maximum) - 1)
        flush_at = max(1, limit // 2)
        budget = self._config.max_message_bytes
        broker_max = limits.max_payload(self._topics.telemetry)
        if broker_max is not None and broker_max < budget:
            log.info("broker's maximum packet size limits messages to %d bytes", broker_max)
            budget = broker_max
        budget -= ENVELOPE_OVERHEAD
        per_message = _BATCHES_PER_MESSAGE if self._config.coalesce else 1
        drain = _Drain(self._config.drain, last_seq=self._store.last_seq,
                       lag_s=self._config.historical_after_s)
        inflight: set[asyncio.Future[None]] = set()
        self._set_pending(set())
        self._ledger_sending = False
        closed = asyncio.ensure_future(conn.wait_closed())
        last_flush = time.monotonic()
        next_ledger = last_flush  # one on every connect, then at least every interval

        def next_messages(count: int) -> list[list[StoredBatch]]:
            # A batch per message while the window has room; the last free slot takes
            # whatever else waits (up to the size). A broker that keeps up gets small
            # messages and the agent holds little in flight; one that falls behind (the
            # window stays full) gets nothing but large ones.
            out: list[list[StoredBatch]] = []
            while len(out) < count:
                group = drain.next(self._store, max_bytes=budget, pending=self._pending,
                                   batches=per_message if len(out) == count - 1 else 1)
                if not group:
                    break
                out.append(group)
            return out

        try:
            while True:
                now = time.monotonic()
                if self._settled >= flush_at or self._ledger_acked or (
                        self._settled and now - last_flush >= _DELETE_EVERY_S):
                    await self._flush_acks()
                    last_flush = now
                self._wake.clear()
                if not self._ledger_sending and (self._store.unreported or now >= next_ledger):
                    await self._send_ledger(conn)
                    next_ledger = now + self._config.ledger_interval_s
                messages: list[list[StoredBatch]] = []
                free = limit - len(inflight) - self._settled
                if free > 0:
                    messages = await loop.run_in_executor(self._executor, next_messages, free)
                if not messages:
                    if self._settled:
                        await self._flush_acks()  # the window is full or the buffer empty
                        last_flush = time.monotonic()
                        continue
                    if not inflight:
                        self._idle.set()
                    # Sleep until a commit, an acknowledgement, the end of the connection
                    # or the next ledger message.
                    waiter = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait((closed, waiter), return_when=asyncio.FIRST_COMPLETED,
                                       timeout=max(0.0, next_ledger - time.monotonic()))
                    waiter.cancel()
                    if closed.done():
                        closed.result()
                    continue
                self._idle.clear()
                old = time.time() - self._config.historical_after_s
                for batches in messages:
                    payload = telemetry_message(gateway=self._gateway, site=self._site,
                                                batches=batches,
                                                historical=batches[0].created < old)
                    future = conn.publish(self._topics.telemetry, payload)
                    inflight.add(future)
                    future.add_done_callback(
                        functools.partial(self._on_done, batches=batches, inflight=inflight))
                    self._pending.update(b.seq for b in batches)
                    self.peak_inflight = max(self.peak_inflight, len(inflight))
                    self.published += 1
                    self.coalesced += len(batches) > 1
                self._set_pending(self._pending)
        finally:
            closed.cancel()
            for future in inflight:
                future.cancel()

    async def _send_ledger(self, conn: Connection) -> None:
        """Report what the buffer gave up (sequence ranges and reasons) and where the
        sequence stands to the platform; entries are marked reported only after the
        broker's PUBACK."""
        loop = asyncio.get_running_loop()
        entries, totals, last, oldest = await loop.run_in_executor(self._executor,
                                                                   self._ledger_state)

        def payload_of(entries: list[LedgerEntry]) -> bytes:
            return ledger_payload(gateway=self._gateway, site=self._site, entries=entries,
                                  totals=totals, last_seq=last, oldest_buffered=oldest)

        payload = payload_of(entries)
        max_payload = conn.limits.max_payload(self._topics.ledger)
        while max_payload is not None and len(payload) > max_payload and len(entries) > 1:
            entries = entries[:len(entries) // 2]  # the rest go in the next ledger messages
            payload = payload_of(entries)
        future = conn.publish(self._topics.ledger, payload)
        self._ledger_sending = True
        ids = [e.id for e in entries]

        def done(f: asyncio.Future[None]) -> None:
            self._ledger_sending = False
            if not f.cancelled() and f.exception() is None:
                self._ledger_acked.extend(ids)
            self._wake.set()

        future.add_done_callback(done)

    def _ledger_state(self) -> tuple[list[LedgerEntry], dict[str, int], int, int | None]:
        """On the store's thread: one consistent view for a ledger message."""
        return (self._store.unreported_ledger(), self._store.ledger_totals(),
                self._store.last_seq, self._store.oldest_seq())

    def _on_done(self, future: asyncio.Future[None], *, batches: list[StoredBatch],
                 inflight: set[asyncio.Future[None]]) -> None:
        inflight.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._acked.extend(b.seq for b in batches)
            self._settled += 1
            self.acked_messages += 1
            self.acked_readings += sum(b.readings for b in batches)
        elif isinstance(exc, PublishRejected):
            # The broker will never take this message (e.g. not authorised, too large):
            # keep the rest flowing, and account for it in the loss ledger (which logs it).
            self._rejected.append(([(b.seq, b.readings) for b in batches], str(exc)))
            self._settled += 1
        # UplinkDisconnected: the batches stay stored and go out on the next connection.
        self._wake.set()

    async def _flush_acks(self) -> None:
        if not (self._acked or self._rejected or self._ledger_acked):
            return
        acked, self._acked = self._acked, []
        rejected, self._rejected = self._rejected, []
        reported, self._ledger_acked = self._ledger_acked, []
        self._settled = 0
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._settle, acked, rejected, reported)
        self._set_pending(self._pending.difference(
            acked, (seq for batches, _ in rejected for seq, _ in batches)))
        self._on_deleted()

    def _set_pending(self, pending: set[int]) -> None:
        self._pending = pending
        # Rebound, never mutated: the store reads it on its own thread.
        self._store.in_flight = frozenset(pending)

    def _settle(self, acked: list[int], rejected: list[tuple[list[tuple[int, int]], str]],
                reported: list[int]) -> None:
        """On the store's thread: forget what was delivered or refused for good."""
        for batches, detail in rejected:
            self._store.record_rejected(batches, detail)
        self._store.delete(acked + [seq for batches, _ in rejected for seq, _ in batches])
        if reported:
            self._store.mark_reported(reported)
