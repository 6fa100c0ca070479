"""Modbus TCP driver: one connection to one device (one host, port and unit id).

pymodbus reports problems through two channels, both translated here: a device exception
response comes back as a response with ``isError()`` and marks only its block bad, while
transport problems raise and are turned into :class:`DeviceUnavailable` (or
:class:`DeviceTimeout`). pymodbus's own reconnects and retries are off: the scheduler owns
reconnects. The request deadline is enforced here, not by pymodbus, so a timeout has its
own type instead of a generic ``ModbusIOException``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from edge_agent.config.model import DeviceConfig
from edge_agent.drivers.base import (
    DeviceTimeout,
    DeviceUnavailable,
    Quality,
    Sample,
)
from edge_agent.drivers.modbus.config import ModbusPoint, ModbusTcpConnection, Table
from edge_agent.drivers.modbus.plan import ReadPlan, plan_reads

__all__ = ["EXCEPTION_NAMES", "ModbusDriver"]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_LIBRARY_TIMEOUT_FACTOR = 2.0
"""pymodbus gets a longer deadline than ours so that ours always fires first."""

_GOOD = Quality.GOOD
_BAD = Quality.BAD
_TIMEOUT = asyncio.timeout
_now = time.time

Reader = Callable[..., Awaitable[ModbusPDU]]


class ModbusDriver:
    """Reads merged register blocks of one Modbus TCP device.

    Not safe for concurrent ``read`` calls on one instance: the scheduler polls a device
    from one task.
    """

    def __init__(self, device: DeviceConfig) -> None:
        connection = device.connection
        if not isinstance(connection, ModbusTcpConnection):
            raise TypeError(f"device {device.name!r}: expected a ModbusTcpConnection, "
                            f"got {type(connection).__name__}")
        self._name = device.name
        self._connection = connection
        self._points: dict[str, ModbusPoint] = {p.name: p for p in device.points}
        self._where = f"{device.name} ({connection.host}:{connection.port} " \
                      f"unit {connection.unit_id})"
        self._client: AsyncModbusTcpClient | None = None
        self._readers: dict[Table, Reader] = {}
        self._lost = False

    @property
    def name(self) -> str:
        return self._name

    def plan(self, point_names: Sequence[str]) -> ReadPlan:
        """The merged blocks that read ``point_names`` (computed once per poll group)."""
        unknown = [n for n in point_names if n not in self._points]
        if unknown:
            raise KeyError(f"device {self._name!r} has no point(s) {', '.join(unknown)}")
        points = [self._points[n] for n in dict.fromkeys(point_names)]
        return plan_reads(points, max_gap=self._connection.max_gap)

    async def open(self) -> None:
        """Connect; raises :class:`DeviceUnavailable` (naming host:port) on failure."""
        await self.close()
        conn = self._connection
        client = AsyncModbusTcpClient(
            conn.host,
            port=conn.port,
            name=self._name,
            timeout=conn.timeout_s * _LIBRARY_TIMEOUT_FACTOR,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
            trace_connect=self._on_connection_change,
        )
        try:
            async with _TIMEOUT(conn.timeout_s):
                connected = await client.connect()
        except TimeoutError as exc:
            client.close()
            raise DeviceTimeout(f"{self._where}: no connection to {conn.host}:{conn.port} "
                                f"within {conn.timeout_s} s") from exc
        except BaseException:
            client.close()
            raise
        if not connected:
            client.close()
            raise DeviceUnavailable(f"{self._where}: cannot connect to {conn.host}:{conn.port}")
        self._client = client
        self._lost = False
        self._readers = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }

    async def close(self) -> None:
        """Drop the connection; safe to call when not open."""
        client, self._client = self._client, None
        self._readers = {}
        if client is not None:
            client.close()

    def _on_connection_change(self, connected: bool) -> None:
        # pymodbus leaves a pending request waiting for its timeout when the peer closes or
        # resets the connection; fail it now so the poll ends with DeviceUnavailable.
        if connected:
            return
        self._lost = True
        client = self._client
        pending = getattr(client.ctx, "response_future", None) if client is not None else None
        if isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(ConnectionException("connection lost"))

    async def read(self, plan: ReadPlan) -> list[Sample]:
        """One poll of ``plan``: one sample per block, bad for a block the device rejected."""
        client = self._client
        if client is None or self._lost or not client.connected:
            raise DeviceUnavailable(f"{self._where}: not connected")
        unit = self._connection.unit_id
        timeout_s = self._connection.timeout_s
        readers = self._readers
        name = self._name
        samples: list[Sample] = []
        for block in plan.blocks:
            try:
                async with _TIMEOUT(timeout_s):
                    response = await readers[block.table](
                        block.start, count=block.count, device_id=unit)
            except TimeoutError as exc:
                raise DeviceTimeout(f"{self._where}: no answer within {timeout_s} s "
                                    f"({block.table.value} {block.start}+{block.count})"
                                    ) from exc
            except (ModbusException, OSError) as exc:
                raise DeviceUnavailable(f"{self._where}: {exc}") from exc
            ts = _now()
            if response.isError():
                code = getattr(response, "exception_code", 0)
                samples.append(Sample(
                    name, ts, _BAD, block.names, [None] * len(block.names),
                    f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"))
                continue
            data = response.bits if block.table in _BIT_TABLES else response.registers
            try:
                values = block.decode(data)
            except (struct.error, IndexError, TypeError, ValueError) as exc:
                raise DeviceUnavailable(
                    f"{self._where}: malformed response to {block.table.value} "
                    f"{block.start}+{block.count}: {exc}") from exc
            samples.append(Sample(name, ts, _GOOD, block.names, values))
        return samples


_BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE})
