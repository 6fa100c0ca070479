"""Wiring of the data path: drivers -> scheduler -> queue -> writer -> SQLite -> forwarder.

Start sink-first (buffer, forwarder, writer, then pollers) and stop source-first: stop
polling, commit what is in memory, give the forwarder a bounded grace period to send the
backlog, say goodbye on the status topic, close the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edge_agent.buffer.store import BufferStore
from edge_agent.buffer.writer import BufferWriter, QueueItem
from edge_agent.clock import ClockMonitor, SyncCheck, kernel_synchronized
from edge_agent.config.model import AgentConfig, DeviceConfig, OverflowPolicy
from edge_agent.drivers.base import Driver
from edge_agent.drivers.registry import DRIVERS, load
from edge_agent.scheduler.poller import DevicePoller
from edge_agent.telemetry.contract import status_payload, topics
from edge_agent.uplink.forwarder import Connection, Forwarder

__all__ = ["Agent", "run"]

log = logging.getLogger(__name__)

STATS_EVERY_S = 60.0


@dataclass(slots=True)
class _Tasks:
    forwarder: asyncio.Task[None]
    writer: asyncio.Task[None]
    pollers: list[asyncio.Task[None]]
    stats: asyncio.Task[None]


class Agent:
    """One running agent. Use ``async with Agent(config) as agent`` and ``agent.stop``."""

    def __init__(self, config: AgentConfig, *, clock: ClockMonitor | None = None) -> None:
        """``clock`` replaces the system clock sources (tests step it)."""
        self.config = config
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._queue: asyncio.Queue[QueueItem] = asyncio.Queue(config.buffer.queue_max_samples)
        self.topics = topics(config.uplink.topic_prefix, config.gateway.site, config.gateway.id)
        self.store: BufferStore | None = None
        self.writer: BufferWriter | None = None
        self.forwarder: Forwarder | None = None
        self.pollers: list[DevicePoller] = []
        self._tasks: _Tasks | None = None
        self.queue_full_waits = 0
        """Times a poller found the queue full and had to wait (backpressure)."""
        self.backpressure = asyncio.Event()
        """Set once a poller had to wait for room in the queue."""

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        drivers = [self._make_driver(d) for d in config.devices]  # before any I/O
        self.store = await loop.run_in_executor(
            self._executor, lambda: BufferStore(config.buffer.path,
                                                durability=config.buffer.durability,
                                                max_bytes=config.buffer.max_bytes,
                                                max_age_s=config.buffer.max_age_s,
                                                min_free_bytes=config.buffer.min_free_bytes,
                                                policy=config.buffer.policy,
                                                thin=config.buffer.thin))
        stats = await loop.run_in_executor(self._executor, self.store.stats)
        log.info("buffer %s: %d readings waiting to be sent, last sequence number %d",
                 config.buffer.path, stats.readings, stats.last_seq)
        self.forwarder = Forwarder(self.store, executor=self._executor, config=config.uplink,
                                   gateway=config.gateway.id, site=config.gateway.site,
                                   topics=self.topics, connect=self._connection,
                                   on_deleted=self._room_freed)
        clock = self._clock or ClockMonitor(
            synchronized=kernel_synchronized
            if config.clock.sync_check is SyncCheck.KERNEL else None)
        self.writer = BufferWriter(self.store, self._queue, executor=self._executor,
                                   clock=clock, max_hold_s=config.clock.max_hold_s,
                                   commit_interval_s=config.buffer.commit_interval_s,
                                   max_message_readings=config.buffer.max_message_readings,
                                   on_commit=self.forwarder.notify,
                                   block_when_full=config.buffer.policy
                                   is OverflowPolicy.BLOCK)
        self.pollers = [DevicePoller(d, drv, self._put)
                        for d, drv in zip(config.devices, drivers, strict=True)]
        self._tasks = _Tasks(
            forwarder=asyncio.create_task(self.forwarder.run(), name="forwarder"),
            writer=asyncio.create_task(self.writer.run(), name="writer"),
            pollers=[asyncio.create_task(p.run(), name=f"poll:{p.device.name}")
                     for p in self.pollers],
            stats=asyncio.create_task(self._log_stats(), name="stats"),
        )
        log.info("agent %s/%s started: %d devices, %d points", config.gateway.site,
                 config.gateway.id, len(config.devices),
                 sum(len(d.points) for d in config.devices))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        tasks.stats.cancel()
        await _cancel_all(tasks.pollers)
        tasks.writer.cancel()  # commits what is still queued before it ends
        await asyncio.gather(tasks.writer, return_exceptions=True)
        assert self.forwarder is not None and self.store is not None
        if self.forwarder.connected:
            grace = self.config.uplink.shutdown_grace_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.forwarder.wait_drained()
        # Patience: its goodbye on the status topic may take up to 2 s.
        await _cancel_all([tasks.forwarder], patience_s=5.0)
        await asyncio.gather(tasks.stats, return_exceptions=True)
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(self._executor, self.store.stats)
        await loop.run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)
        log.info("agent stopped: %d readings still buffered for the next start (up to "
                 "sequence number %d)", stats.readings, stats.last_seq)

    def _room_freed(self) -> None:
        if self.writer is not None:
            self.writer.room_freed()

    async def _put(self, item: QueueItem) -> None:
        """The pollers' sink: the bounded queue. When it is full the poller waits (that is
        the backpressure) and the wait is made visible."""
        if self._queue.full():
            self.queue_full_waits += 1
            self.backpressure.set()
        await self._queue.put(item)

    def _make_driver(self, device: DeviceConfig) -> Driver:
        entry = DRIVERS[device.driver]
        driver_class = load(entry.driver, extra=entry.extra)
        driver: Driver = driver_class(device)
        return driver

    def _connection(self, *, will_retain: bool) -> Connection:
        from edge_agent.uplink.mqtt import MqttConnection

        gateway = self.config.gateway
        return MqttConnection(self.config.uplink, will_topic=self.topics.status,
                              will_payload=status_payload(gateway=gateway.id, site=gateway.site,
                                                          state="offline",
                                                          reason="connection lost"),
                              will_retain=will_retain)

    async def _log_stats(self) -> None:
        written_before, accepted_before = _bytes_written(), 0
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            assert self.writer and self.forwarder
            down = [p.device.name for p in self.pollers if p.stats.state != "available"]
            written, accepted = _bytes_written(), self.writer.accepted_readings
            per_reading = ((written - written_before) / (accepted - accepted_before)
                           if accepted > accepted_before else 0.0)
            written_before, accepted_before = written, accepted
            log.info("accepted %d readings, delivered %d in %d messages (%d coalesced), "
                     "uplink %s, devices down: %s, disk %.1f bytes written per reading, "
                     "backpressure waits %d",
                     accepted, self.forwarder.acked_readings, self.forwarder.acked_messages,
                     self.forwarder.coalesced,
                     "connected" if self.forwarder.connected else "disconnected",
                     ", ".join(down) or "none", per_reading, self.queue_full_waits)


def _bytes_written() -> int:
    """Bytes this process caused to be written to storage (SD-card wear), from the kernel."""
    try:
        with open("/proc/self/io") as io:
            for line in io:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _cancel_all(tasks: list[asyncio.Task[None]], *, patience_s: float = 0.5) -> None:
    """Cancel tasks and wait for them, cancelling again while any is still running.

    One cancellation is not always enough: on Python 3.11 ``asyncio.wait_for`` (used inside
    pymodbus) loses a cancellation that arrives as its future completes, and the poller
    would go on polling. Repeating the cancellation ends it on the next await.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience_s)


async def run(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with Agent(config):
        await stop.wait()
        log.info("stopping")
