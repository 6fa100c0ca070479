"""Modbus driver: one device (one unit id) on Modbus TCP, RTU over a serial port, or RTU
framed over TCP.

Every device reaches the wire through a shared :class:`~edge_agent.drivers.modbus.bus.Bus`
(one per serial port or TCP endpoint): ``open`` attaches to it and ``close`` detaches, so
the scheduler reopening one failed device never disturbs the others on the same bus.

pymodbus reports problems through two channels, both translated here: a device exception
response comes back as a response with ``isError()`` and marks only its block bad, while
transport problems raise and are turned into :class:`DeviceUnavailable` (or
:class:`DeviceTimeout`). An "illegal data address" answer to a merged block splits the
block in halves, retried at once, down to the offending points; the split is kept in the
plan for the following polls. SunSpec scale factors are applied once every block of a poll
is read, since a value and its exponent may sit in different blocks.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from pymodbus.pdu import ModbusPDU

from edge_agent.config.model import DeviceConfig
from edge_agent.drivers.base import (
    DeviceError,
    DeviceRejected,
    DeviceUnavailable,
    Quality,
    Sample,
)
from edge_agent.drivers.modbus.bus import Bus, BusSpec, BusStats, Client, bus_for, rtu_frame_bytes
from edge_agent.drivers.modbus.codec import (
    NOT_IMPLEMENTED,
    SCALE_FACTOR_LIMIT,
    apply_scale_factors,
    compile_block,
    encode_value,
    set_bit,
)
from edge_agent.drivers.modbus.config import (
    BIT_TABLES,
    MAX_REGISTERS_PER_WRITE,
    ModbusConnection,
    ModbusPoint,
    ModbusRtuConnection,
    ModbusRtuOverTcpConnection,
    ModbusTcpConnection,
    Table,
    WriteFunction,
)
from edge_agent.drivers.modbus.plan import ReadBlock, ReadPlan, plan_reads, split_block

__all__ = ["EXCEPTION_NAMES", "InvalidWrite", "ModbusDriver", "WriteNotVerified"]

log = logging.getLogger(__name__)

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
ILLEGAL_DATA_ADDRESS = 2

_GOOD = Quality.GOOD
_BAD = Quality.BAD
_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_READERS = {
    Table.HOLDING: "read_holding_registers",
    Table.INPUT: "read_input_registers",
    Table.COIL: "read_coils",
    Table.DISCRETE: "read_discrete_inputs",
}


class InvalidWrite(DeviceError):
    """A write that was refused before anything was written: unknown point, read-only
    table, a value that does not fit the point, or a scale factor that does not read as
    one (only that read is sent)."""


class WriteNotVerified(DeviceError):
    """The device accepted a write but reading it back gave other registers."""


def _reason(code: int) -> str:
    return f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


class ModbusDriver:
    """Reads merged blocks of one Modbus device and writes its points.

    Not safe for concurrent ``read`` calls on one instance: the scheduler polls a device
    from one task. ``write`` may run beside ``read``: the bus serialises requests.
    """

    def __init__(self, device: DeviceConfig, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        connection = device.connection
        if not isinstance(connection, ModbusTcpConnection | ModbusRtuOverTcpConnection
                          | ModbusRtuConnection):
            raise TypeError(f"device {device.name!r}: expected a Modbus connection, "
                            f"got {type(connection).__name__}")
        self._name = device.name
        self._connection: ModbusConnection = connection
        self._spec = BusSpec.of(connection)
        self._points: dict[str, ModbusPoint] = {p.name: p for p in device.points}
        where = connection.port if isinstance(connection, ModbusRtuConnection) \
            else f"{connection.host}:{connection.port}"
        self._where = f"{device.name} ({where} unit {connection.unit_id})"
        self._bus: Bus | None = None
        self._clock = clock

    @property
    def name(self) -> str:
        return self._name

    @property
    def bus(self) -> Bus | None:
        """The shared connection while open."""
        return self._bus

    @property
    def bus_stats(self) -> BusStats | None:
        """Figures of this device's bus (shared with the other devices on it)."""
        return self._bus.stats if self._bus is not None else None

    def plan(self, point_names: Sequence[str]) -> ReadPlan:
        """The merged blocks that read ``point_names`` (computed once per poll group)."""
        unknown = [n for n in point_names if n not in self._points]
        if unknown:
            raise KeyError(f"device {self._name!r} has no point(s) {', '.join(unknown)}")
        points = [self._points[n] for n in dict.fromkeys(point_names)]
        return plan_reads(points, max_gap=self._connection.max_gap)

    async def open(self) -> None:
        """Attach to the bus, opening it if this is its first device; raises
        :class:`DeviceUnavailable` (naming the port or host:port) on failure."""
        await self.close()
        bus = bus_for(self._spec)
        try:
            await bus.attach(self._connection.timeout_s)
        except DeviceUnavailable as exc:
            raise type(exc)(f"{self._where}: {exc}") from exc
        self._bus = bus

    async def close(self) -> None:
        """Detach from the bus; safe to call when not open."""
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.detach()

    async def _execute(self, bus: Bus, method: str, address: int, what: str,
                       frames: tuple[int, int], *args: Any, **kwargs: Any) -> ModbusPDU:
        unit = self._connection.unit_id

        def call(client: Client) -> Any:
            return getattr(client, method)(address, *args, device_id=unit, **kwargs)

        response: ModbusPDU = await bus.execute(
            call, unit=unit, timeout_s=self._connection.timeout_s, where=self._where,
            what=what, frame_bytes=frames)
        return response

    async def _read_block(self, bus: Bus, block: ReadBlock) -> ModbusPDU:
        return await self._execute(
            bus, _READERS[block.table], block.start,
            f"{block.table.value} {block.start}+{block.count}",
            rtu_frame_bytes(_FUNCTION[block.table], block.count), count=block.count)

    def _sample(self, block: ReadBlock, response: ModbusPDU) -> Sample:
        ts = self._clock()
        if response.isError():
            code = getattr(response, "exception_code", 0)
            return Sample(self._name, ts, _BAD, block.names, [None] * len(block.names),
                          _reason(code))
        data = response.bits if block.table in BIT_TABLES else response.registers
        try:
            values = block.decode(data)
        except (struct.error, IndexError, TypeError, ValueError) as exc:
            raise DeviceUnavailable(
                f"{self._where}: malformed response to {block.table.value} "
                f"{block.start}+{block.count}: {exc}") from exc
        return Sample(self._name, ts, _GOOD, block.names, values)

    async def read(self, plan: ReadPlan) -> list[Sample]:
        """One poll of ``plan``: one sample per block, bad for a block the device rejected."""
        bus = self._bus
        if bus is None:
            raise DeviceUnavailable(f"{self._where}: not connected")
        samples: list[Sample] = []
        blocks = plan.blocks
        i = 0
        while i < len(blocks):
            block = blocks[i]
            response = await self._read_block(bus, block)
            if (response.isError()
                    and getattr(response, "exception_code", 0) == ILLEGAL_DATA_ADDRESS
                    and len(block.points) > 1):
                parts = await self._split(bus, block, samples)
                blocks[i:i + 1] = parts
                i += len(parts)
                log.info("device %s: %s %d+%d rejected (illegal data address); now read "
                         "as %s", self._name, block.table.value, block.start, block.count,
                         ", ".join(f"{b.start}+{b.count}" for b in parts))
                continue
            samples.append(self._sample(block, response))
            i += 1
        if plan.scale_factors:
            return _scale(blocks, samples)
        return samples

    async def _split(self, bus: Bus, block: ReadBlock, samples: list[Sample]
                     ) -> list[ReadBlock]:
        """Read ``block`` as halves, recursively while a half is refused with "illegal
        data address"; returns the blocks that replace it."""
        halves = split_block(block)
        if halves is None:
            raise AssertionError("a single-point block is never split")
        out: list[ReadBlock] = []
        for half in halves:
            response = await self._read_block(bus, half)
            if (response.isError()
                    and getattr(response, "exception_code", 0) == ILLEGAL_DATA_ADDRESS
                    and len(half.points) > 1):
                out.extend(await self._split(bus, half, samples))
                continue
            samples.append(self._sample(half, response))
            out.append(half)
        return out

    # -- writes ----------------------------------------------------------------------------

    async def write(self, point_name: str, value: Any, *, verify: bool = False) -> None:
        """Write ``value`` to a point (the same encoding as reading it: type, byte order,
        scale and offset, enum names, bitfield names, strings).

        Coils use function 5 (15 with ``write_function: multiple``), registers 6 for one
        register and 16 for several (always 16 with ``write_function: multiple``); a bit
        inside a holding register is read, changed and written back (not atomic against
        other masters). With ``verify`` the registers are read back and compared.

        Raises :class:`InvalidWrite` before any I/O for an unknown or read-only point or a
        value that does not fit, :class:`DeviceRejected` (with the exception code) when the
        device refuses, :class:`WriteNotVerified` when the read-back differs, and
        :class:`DeviceUnavailable`/:class:`DeviceTimeout` on transport problems.
        """
        point = self._points.get(point_name)
        if point is None:
            raise InvalidWrite(f"device {self._name!r} has no point {point_name!r}")
        if point.table in (Table.INPUT, Table.DISCRETE):
            raise InvalidWrite(f"{self._name}.{point_name}: {point.table.value} points are "
                               "read-only")
        if point.scale_factor is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidWrite(f"{self._name}.{point_name}: expected a number, "
                                   f"got {value!r}")
            point = await self._resolve_scale_factor(point)
        words: list[int] = []
        if not point.in_register:
            try:
                words = encode_value(point, value)
            except ValueError as exc:
                raise InvalidWrite(f"{self._name}: {exc}") from exc
            if len(words) > MAX_REGISTERS_PER_WRITE:
                raise InvalidWrite(f"{self._name}.{point_name}: {len(words)} registers are "
                                   f"over the write limit of {MAX_REGISTERS_PER_WRITE}")
        elif not isinstance(value, bool | int):
            raise InvalidWrite(f"{self._name}.{point_name}: expected true or false, "
                               f"got {value!r}")
        bus = self._bus
        if bus is None:
            raise DeviceUnavailable(f"{self._where}: not connected")
        multiple = self._connection.write_function is WriteFunction.MULTIPLE
        what = f"write {point_name}"
        if point.table is Table.COIL:
            on = bool(words[0])
            if multiple:
                response = await self._execute(bus, "write_coils", point.address, what,
                                               rtu_frame_bytes(15, 1), [on])
            else:
                response = await self._execute(bus, "write_coil", point.address, what,
                                               rtu_frame_bytes(5, 1), on)
            self._check(response, what)
            if verify:
                await self._verify_bits(bus, point, on)
            return
        if point.in_register:
            words = [set_bit(await self._read_word(bus, point), point.bit or 0, bool(value))]
        if len(words) == 1 and not multiple:
            response = await self._execute(bus, "write_register", point.address, what,
                                           rtu_frame_bytes(6, 1), words[0])
        else:
            response = await self._execute(bus, "write_registers", point.address, what,
                                           rtu_frame_bytes(16, len(words)), words)
        self._check(response, what)
        if verify:
            got = await self._read_registers(bus, point)
            ok = ((got[0] >> (point.bit or 0)) & 1 == int(bool(value))) if point.in_register \
                else got == words
            if not ok:
                raise WriteNotVerified(f"{self._where}: wrote {words} to {point_name} "
                                       f"(holding {point.address}) but read back {got}")

    async def _resolve_scale_factor(self, point: ModbusPoint) -> ModbusPoint:
        """``point`` with its scale factor read from the device and folded into ``scale``."""
        factor = point.scale_factor
        assert factor is not None
        bus = self._bus
        if bus is None:
            raise DeviceUnavailable(f"{self._where}: not connected")
        registers = await self._read_registers(bus, factor)
        exponent = compile_block([factor], factor.address)(registers)[0]
        if exponent == NOT_IMPLEMENTED[factor.type] \
                or not -SCALE_FACTOR_LIMIT <= exponent <= SCALE_FACTOR_LIMIT:
            raise InvalidWrite(f"{self._where}: {point.name}: its scale factor "
                               f"{factor.name} reads {exponent} (not implemented or outside "
                               f"-{SCALE_FACTOR_LIMIT}..{SCALE_FACTOR_LIMIT}); nothing "
                               "written")
        return replace(point, scale=point.scale * 10.0 ** exponent, scale_factor=None)

    def _check(self, response: ModbusPDU, what: str) -> None:
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise DeviceRejected(f"{self._where}: {what}: {_reason(code)}", code=code)

    async def _read_registers(self, bus: Bus, point: ModbusPoint) -> list[int]:
        what = f"read back {point.name}"
        response = await self._execute(bus, _READERS[point.table], point.address, what,
                                       rtu_frame_bytes(_FUNCTION[point.table], point.width),
                                       count=point.width)
        self._check(response, what)
        registers = list(response.registers)
        if len(registers) != point.width:
            raise DeviceUnavailable(f"{self._where}: {what}: expected {point.width} "
                                    f"registers, got {len(registers)}")
        return registers

    async def _read_word(self, bus: Bus, point: ModbusPoint) -> int:
        return (await self._read_registers(bus, point))[0]

    async def _verify_bits(self, bus: Bus, point: ModbusPoint, on: bool) -> None:
        what = f"read back {point.name}"
        response = await self._execute(bus, "read_coils", point.address, what,
                                       rtu_frame_bytes(1, 1), count=1)
        self._check(response, what)
        if not response.bits or bool(response.bits[0]) != on:
            raise WriteNotVerified(f"{self._where}: wrote {on} to coil {point.address} "
                                   f"({point.name}) but read back "
                                   f"{response.bits[0] if response.bits else 'nothing'}")


def _scale(blocks: Sequence[ReadBlock], samples: list[Sample]) -> list[Sample]:
    """Apply the scale factors read in this poll (``samples[i]`` is ``blocks[i]``'s) and
    drop the scale factor values, which are not published. A scale factor whose block
    failed leaves the values that need it ``None``."""
    factors: dict[str, Any] = {}
    for block, sample in zip(blocks, samples, strict=True):
        if block.factors and sample.quality is _GOOD:
            values = sample.values
            for i, name in block.factors:
                factors[name] = values[i]
    out: list[Sample] = []
    for block, sample in zip(blocks, samples, strict=True):
        if sample.quality is _GOOD and (block.scaled or block.factors):
            values = cast(list[Any], sample.values)  # the decoder's own list
            apply_scale_factors(values, block.scaled, factors)
            del values[len(block.names):]
        if block.names:  # a block of scale factors alone has nothing to publish
            out.append(sample)
    return out
