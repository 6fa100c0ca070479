"""Shared Modbus connections (*buses*): one serial port, or one TCP endpoint, for every
device (unit id) that uses it.

A bus is a shared medium: one request on the wire at a time (an ``asyncio.Lock``), and on
RTU the silent interval of 3.5 character times kept between frames (1.75 ms above 19200
baud, as the Modbus serial line specification fixes it). Devices ``attach`` when they open
and ``detach`` when they close; the connection is opened by the first and closed by the
last, so one device failing (and being reopened by the scheduler) never closes the port
under the others. A timeout is a fact about one slave, not about the bus: only a transport
failure (the port vanished, the TCP connection was reset) or timeouts of several different
units in a row with no answer in between mark the connection lost, and the next ``attach``
reconnects it.

pymodbus's own reconnects and retries are off: the scheduler owns reconnects. Figures
(requests, timeouts, time the bus was busy, time the bytes take on the line at the
configured baud rate, waits for the bus) are in :class:`BusStats`, read through
:func:`bus_stats` or :attr:`Bus.stats`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from edge_agent.drivers.base import DeviceTimeout, DeviceUnavailable
from edge_agent.drivers.modbus.config import (
    ModbusConnection,
    ModbusRtuConnection,
    ModbusRtuOverTcpConnection,
    Parity,
    bus_key,
)
from edge_agent.figures import RecentValues

__all__ = ["Bus", "BusKind", "BusSpec", "BusStats", "bus_for", "bus_stats", "rtu_frame_bytes"]

log = logging.getLogger(__name__)

_LIBRARY_TIMEOUT_FACTOR = 2.0
"""pymodbus gets a longer deadline than ours so that ours always fires first."""
_SUSPECT_TIMEOUTS = 3
"""Consecutive timeouts, of at least two different units, after which the connection
itself is suspected and reopened at the next attach."""


class BusKind(StrEnum):
    TCP = "tcp"
    RTU_OVER_TCP = "rtu_over_tcp"
    RTU = "rtu"


@dataclass(frozen=True, slots=True)
class BusSpec:
    """What identifies a bus and how to open it."""

    key: str
    kind: BusKind
    address: str
    """Host name, or serial device path."""
    port: int = 0
    baudrate: int | None = None
    parity: Parity = Parity.NONE
    stopbits: int = 1
    bytesize: int = 8

    @classmethod
    def of(cls, connection: ModbusConnection) -> BusSpec:
        key = bus_key(connection)
        if isinstance(connection, ModbusRtuConnection):
            return cls(key, BusKind.RTU, connection.port, 0, connection.baudrate,
                       connection.parity, connection.stopbits, connection.bytesize)
        if isinstance(connection, ModbusRtuOverTcpConnection):
            return cls(key, BusKind.RTU_OVER_TCP, connection.host, connection.port,
                       connection.baudrate)
        return cls(key, BusKind.TCP, connection.host, connection.port)

    @property
    def char_s(self) -> float:
        """Time of one character on the line (start, data, parity and stop bits)."""
        if self.baudrate is None:
            return 0.0
        bits = 1 + self.bytesize + (0 if self.parity is Parity.NONE else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def silent_s(self) -> float:
        """Quiet time kept between two frames on the line (none on Modbus TCP)."""
        if self.kind is BusKind.TCP:
            return 0.0
        if self.baudrate is None or self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_s


@dataclass(slots=True)
class BusStats:
    """Figures of one bus since it was first opened."""

    key: str
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    answers: int = 0
    """Responses received, exception responses included."""
    exceptions: int = 0
    timeouts: int = 0
    transport_failures: int = 0
    connects: int = 0
    busy_s: float = 0.0
    """Wall time a request held the bus (send to answer or timeout, plus the silent gap)."""
    line_s: float = 0.0
    """Time the frames of answered requests take on the line at the configured baud rate,
    gaps included (0 when the baud rate is unknown)."""
    waits_s: RecentValues = field(default_factory=RecentValues)
    """Recent times requests waited for the bus (lock and silent gap)."""

    def elapsed_s(self, now: float | None = None) -> float:
        return max((now if now is not None else time.monotonic()) - self.started, 1e-9)

    def utilisation(self, now: float | None = None) -> float:
        """Share of the time the bus was held by a request (measured, 0..1)."""
        return min(1.0, self.busy_s / self.elapsed_s(now))

    def line_utilisation(self, now: float | None = None) -> float:
        """Share of the time the frames occupy the line at the configured baud rate."""
        return min(1.0, self.line_s / self.elapsed_s(now))

    def wait_figures(self) -> tuple[float, float]:
        """p50 and p99 of the waits for the bus, in seconds."""
        return self.waits_s.quantile(0.5), self.waits_s.quantile(0.99)


def rtu_frame_bytes(function: int, count: int) -> tuple[int, int]:
    """Bytes of the RTU request and normal response of ``function`` for ``count``
    registers or bits (address, PDU and CRC); an exception response is 5 bytes."""
    if function in (1, 2):
        return 8, 5 + (count + 7) // 8
    if function in (3, 4):
        return 8, 5 + 2 * count
    if function in (5, 6):
        return 8, 8
    if function == 15:
        return 9 + (count + 7) // 8, 8
    if function == 16:
        return 9 + 2 * count, 8
    return 8, 8


Client = AsyncModbusTcpClient | AsyncModbusSerialClient
Request = Callable[[Client], Awaitable[ModbusPDU]]


class Bus:
    """One shared connection; use :func:`bus_for` to get the one for a device."""

    def __init__(self, spec: BusSpec) -> None:
        self.spec = spec
        self.stats = BusStats(spec.key)
        self._wire = asyncio.Lock()
        self._client: Client | None = None
        self._lost = True
        self._users = 0
        self._quiet_until = 0.0
        self._silent_units: set[int] = set()
        self._timeouts_in_row = 0

    @property
    def users(self) -> int:
        return self._users

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and not self._lost and client.connected

    async def attach(self, timeout_s: float) -> None:
        """Count a device in; connect (or reconnect a lost connection) if needed."""
        self._users += 1
        try:
            if not self.connected:
                async with self._wire:
                    if not self.connected:
                        await self._connect(timeout_s)
        except BaseException:
            await self.detach()
            raise

    async def detach(self) -> None:
        """Count a device out; the last one closes the connection."""
        self._users -= 1
        if self._users <= 0:
            self._users = 0
            self._close()

    def _close(self) -> None:
        client, self._client = self._client, None
        self._lost = True
        if client is not None:
            client.close()

    async def _connect(self, timeout_s: float) -> None:
        self._close()
        spec = self.spec
        client: Client
        common: dict[str, Any] = {
            "name": spec.key, "timeout": timeout_s * _LIBRARY_TIMEOUT_FACTOR,
            "retries": 0, "reconnect_delay": 0, "reconnect_delay_max": 0,
        }
        if spec.kind is BusKind.RTU:
            client = AsyncModbusSerialClient(
                spec.address, framer=FramerType.RTU, baudrate=spec.baudrate or 9600,
                bytesize=spec.bytesize, parity=spec.parity.value[0].upper(),
                stopbits=spec.stopbits, trace_connect=self._on_connection_change, **common)
        else:
            framer = FramerType.RTU if spec.kind is BusKind.RTU_OVER_TCP else FramerType.SOCKET
            client = AsyncModbusTcpClient(spec.address, port=spec.port, framer=framer,
                                          trace_connect=self._on_connection_change, **common)
        where = spec.address if spec.kind is BusKind.RTU else f"{spec.address}:{spec.port}"
        try:
            async with asyncio.timeout(timeout_s):
                connected = await client.connect()
        except TimeoutError as exc:
            client.close()
            raise DeviceTimeout(f"no connection to {where} within {timeout_s} s") from exc
        except Exception as exc:  # pyserial/termios raise types of their own (termios.error)
            client.close()
            raise DeviceUnavailable(f"cannot open {where}: {exc!r}") from exc
        except BaseException:
            client.close()
            raise
        if not connected:
            client.close()
            raise DeviceUnavailable(f"cannot {'open' if spec.kind is BusKind.RTU else 'connect to'}"
                                    f" {where}")
        self._client = client
        self._lost = False
        self._silent_units.clear()
        self._timeouts_in_row = 0
        self.stats.connects += 1
        if self.stats.connects == 1:
            self.stats.started = time.monotonic()
        else:
            log.info("bus %s reconnected", spec.key)

    def _on_connection_change(self, connected: bool) -> None:
        # pymodbus leaves a pending request waiting for its timeout when the peer closes or
        # resets the connection (or the serial port fails); fail it now so the poll ends
        # with DeviceUnavailable at once.
        if connected:
            return
        if not self._lost:
            self.stats.transport_failures += 1
            log.warning("bus %s: connection lost", self.spec.key)
        self._lost = True
        client = self._client
        pending = getattr(client.ctx, "response_future", None) if client is not None else None
        if isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(ConnectionException("connection lost"))
            pending.exception()  # retrieved: nobody may be waiting (the request timed out)

    async def execute(self, request: Request, *, unit: int, timeout_s: float, where: str,
                      what: str, frame_bytes: tuple[int, int] = (8, 8)) -> ModbusPDU:
        """Run one request alone on the wire; returns the response (which may be an
        exception response). Raises :class:`DeviceTimeout` when the unit does not answer
        within ``timeout_s`` and :class:`DeviceUnavailable` when the connection fails."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        asked = loop.time()
        async with self._wire:
            client = self._client
            if client is None or self._lost or not client.connected:
                raise DeviceUnavailable(f"{where}: not connected ({self.spec.key})")
            delay = self._quiet_until - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            stats.waits_s.add(sent - asked)
            stats.requests += 1
            silent = self.spec.silent_s
            try:
                async with asyncio.timeout(timeout_s):
                    response = await request(client)
            except TimeoutError as exc:
                stats.timeouts += 1
                self._note_timeout(unit)
                raise DeviceTimeout(f"{where}: no answer within {timeout_s} s ({what})"
                                    ) from exc
            except Exception as exc:  # ModbusException, OSError, SerialException, termios
                if not self._lost:
                    stats.transport_failures += 1
                    log.warning("bus %s: %s", self.spec.key, exc)
                self._lost = True
                raise DeviceUnavailable(f"{where}: {exc}") from exc
            finally:
                done = loop.time()
                stats.busy_s += done - sent + silent
                self._quiet_until = done + silent
            stats.answers += 1
            self._silent_units.clear()
            self._timeouts_in_row = 0
            char_s = self.spec.char_s
            if char_s:
                answer = 5 if response.isError() else frame_bytes[1]
                stats.line_s += (frame_bytes[0] + answer) * char_s + 2 * silent
            if response.isError():
                stats.exceptions += 1
            return response

    def _note_timeout(self, unit: int) -> None:
        self._silent_units.add(unit)
        self._timeouts_in_row += 1
        if self._timeouts_in_row >= _SUSPECT_TIMEOUTS and len(self._silent_units) >= 2:
            log.warning("bus %s: %d timeouts in a row from units %s: reopening the connection",
                        self.spec.key, self._timeouts_in_row, sorted(self._silent_units))
            self._lost = True


_BUSES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Bus]] = \
    weakref.WeakKeyDictionary()


def bus_for(spec: BusSpec) -> Bus:
    """The bus of ``spec.key`` in the running event loop (created on first use and kept,
    with its figures, while the loop lives; its connection is closed while unused)."""
    buses = _BUSES.setdefault(asyncio.get_running_loop(), {})
    bus = buses.get(spec.key)
    if bus is None:
        bus = buses[spec.key] = Bus(spec)
    elif bus.spec != spec:
        raise DeviceUnavailable(f"{spec.key} is already open with other line settings "
                                f"({bus.spec}); every device on a bus must use the same")
    return bus


def bus_stats() -> list[BusStats]:
    """Figures of the buses used in the running event loop."""
    return [bus.stats for bus in _BUSES.get(asyncio.get_running_loop(), {}).values()]
