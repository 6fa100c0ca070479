"""Writes to real Modbus servers: every encoding, function codes, verification, errors."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.config.model import DeviceConfig
from edge_agent.devtools.simulator import BusTransport, SimulatedBus, SimulatedSite
from edge_agent.drivers.base import DeviceRejected, DeviceUnavailable, Quality
from edge_agent.drivers.modbus.codec import set_bit
from edge_agent.drivers.modbus.config import (
    ByteOrder,
    DataType,
    ModbusPoint,
    ModbusRtuConnection,
    ModbusTcpConnection,
    Table,
    WriteFunction,
)
from edge_agent.drivers.modbus.driver import InvalidWrite, ModbusDriver, WriteNotVerified

T = DataType
BO = ByteOrder

POINTS = (
    ModbusPoint(name="u16", interval_s=1.0, table=Table.HOLDING, address=0, type=T.UINT16),
    ModbusPoint(name="f32_cdab", interval_s=1.0, table=Table.HOLDING, address=1,
                type=T.FLOAT32, order=BO.CDAB),
    ModbusPoint(name="i64_dcba", interval_s=1.0, table=Table.HOLDING, address=3,
                type=T.INT64, order=BO.DCBA),
    ModbusPoint(name="f64_badc", interval_s=1.0, table=Table.HOLDING, address=7,
                type=T.FLOAT64, order=BO.BADC),
    ModbusPoint(name="tenths", interval_s=1.0, table=Table.HOLDING, address=11,
                type=T.INT16, scale=0.1),
    ModbusPoint(name="label", interval_s=1.0, table=Table.HOLDING, address=12,
                type=T.STRING, count=4, order=BO.BADC),
    ModbusPoint(name="mode", interval_s=1.0, table=Table.HOLDING, address=16, type=T.UINT16,
                enum=((0, "off"), (1, "auto"), (2, "manual"))),
    ModbusPoint(name="flags", interval_s=1.0, table=Table.HOLDING, address=17, type=T.UINT16,
                bits=((0, "lamp"), (3, "fan"))),
    ModbusPoint(name="bit5", interval_s=1.0, table=Table.HOLDING, address=18, type=T.BOOL,
                bit=5),
    ModbusPoint(name="relay", interval_s=1.0, table=Table.COIL, address=4, type=T.BOOL),
    ModbusPoint(name="measured", interval_s=1.0, table=Table.INPUT, address=0, type=T.UINT16),
    ModbusPoint(name="alarm_in", interval_s=1.0, table=Table.DISCRETE, address=0,
                type=T.BOOL),
)

WRITES: list[tuple[str, object]] = [
    ("u16", 54321), ("f32_cdab", -12.25), ("i64_dcba", -(2**40)), ("f64_badc", 1e-300),
    ("tenths", -12.3), ("label", "PV-7"), ("mode", "manual"), ("flags", "lamp,fan"),
    ("bit5", True), ("relay", True),
]


def rtu_device(bus: SimulatedBus, *, write_function: WriteFunction = WriteFunction.AUTO
               ) -> DeviceConfig:
    return DeviceConfig(name="plc", driver="modbus_rtu", connection=ModbusRtuConnection(
        port=bus.port, unit_id=1, baudrate=115200, timeout_s=0.5,
        write_function=write_function), points=POINTS)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SimulatedBus]:
    async with SimulatedBus(units=(1,), transport=BusTransport.SERIAL,
                            tmp_dir=str(tmp_path)) as b:
        yield b


@pytest.fixture
async def driver(bus: SimulatedBus) -> AsyncIterator[ModbusDriver]:
    d = ModbusDriver(rtu_device(bus))
    await d.open()
    yield d
    await d.close()


async def test_every_encoding_writes_and_reads_back(bus: SimulatedBus,
                                                    driver: ModbusDriver) -> None:
    """Each written value, verified by read-back, reads back decoded as written."""
    bus.set_registers(1, 18, [0x0101])
    for name, value in WRITES:
        await driver.write(name, value, verify=True)
    samples = await driver.read(driver.plan([n for n, _ in WRITES]))
    got = {n: v for s in samples for n, v in zip(s.names, s.values, strict=True)}
    assert all(s.quality is Quality.GOOD for s in samples)
    assert got == {**dict(WRITES), "tenths": pytest.approx(-12.3)}
    assert bus.table(1)[1:3] == [0x0000, 0xC144]  # -12.25 = C144 0000, words swapped
    assert bus.table(1)[18] == 0x0121  # bit 5 set, the other bits of the register kept


async def test_single_register_uses_function_6_and_multiple_16(bus: SimulatedBus,
                                                               driver: ModbusDriver) -> None:
    """One register is written with function 6, several with 16, a coil with 5."""
    await driver.write("u16", 1)
    await driver.write("f32_cdab", 1.0)
    await driver.write("relay", False)
    assert [f for _, f in bus.functions] == [6, 16, 5]


async def test_write_function_multiple_forces_16_and_15(bus: SimulatedBus) -> None:
    """write_function: multiple writes single registers with 16 and coils with 15."""
    driver = ModbusDriver(rtu_device(bus, write_function=WriteFunction.MULTIPLE))
    await driver.open()
    try:
        await driver.write("u16", 7, verify=True)
        await driver.write("relay", True, verify=True)
    finally:
        await driver.close()
    assert [f for _, f in bus.functions] == [16, 3, 15, 1]
    assert bus.table(1)[0] == 7 and bus.bit(1, 4)


@pytest.mark.parametrize(("name", "value", "match"), [
    ("measured", 1, "read-only"),
    ("alarm_in", True, "read-only"),
    ("nope", 1, "no point 'nope'"),
    ("u16", 70000, "does not fit uint16"),
    ("label", "much too long", "over the 8"),
    ("mode", "turbo", "not one of"),
    ("bit5", "yes", "expected true or false"),
])
async def test_invalid_writes_are_refused_before_io(bus: SimulatedBus, driver: ModbusDriver,
                                                    name: str, value: object,
                                                    match: str) -> None:
    """Unknown, read-only points and values that do not fit raise InvalidWrite, no I/O."""
    with pytest.raises(InvalidWrite, match=match):
        await driver.write(name, value)
    assert bus.functions == []


@pytest.mark.parametrize(("name", "value", "address", "table", "expected"), [
    ("u16", 54321, 0, Table.HOLDING, "wrote [54321] to u16 (holding 0) but read back [7]"),
    ("f32_cdab", -12.25, 2, Table.HOLDING,
     "wrote [0, 49476] to f32_cdab (holding 1) but read back [0, 7]"),
    ("bit5", True, 18, Table.HOLDING, "wrote [39] to bit5 (holding 18) but read back [7]"),
    ("relay", True, 4, Table.COIL, "wrote True to coil 4 (relay) but read back False"),
], ids=["function-6", "function-16", "bit-in-register", "coil"])
async def test_write_not_verified_names_point_and_read_back(
        bus: SimulatedBus, driver: ModbusDriver, name: str, value: object, address: int,
        table: Table, expected: str) -> None:
    """A device that acknowledges a write but keeps the old contents fails verification;
    the error names the point, what was written and what was read back."""
    bus.set_registers(1, 0, [7] * 19)
    bus.ignore_writes(1, address, table=table)
    await driver.write(name, value)  # acknowledged: without verify nothing is noticed
    with pytest.raises(WriteNotVerified) as info:
        await driver.write(name, value, verify=True)
    assert str(info.value).endswith(expected)


async def test_device_refusal_is_device_rejected_with_code(bus: SimulatedBus,
                                                           driver: ModbusDriver) -> None:
    """An exception response to a write raises DeviceRejected carrying the code."""
    bus.fail_with(1, 4)
    with pytest.raises(DeviceRejected, match="server device failure") as info:
        await driver.write("u16", 3)
    assert info.value.code == 4


async def test_write_when_closed_is_unavailable(bus: SimulatedBus) -> None:
    """Writing through a driver that is not open raises DeviceUnavailable."""
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await ModbusDriver(rtu_device(bus)).write("u16", 1)


async def test_write_over_modbus_tcp() -> None:
    """Writes work the same on Modbus TCP, verified by reading back."""
    async with SimulatedSite(registers=50) as site:
        driver = ModbusDriver(DeviceConfig(
            name="plc", driver="modbus_tcp",
            connection=ModbusTcpConnection(host="127.0.0.1", port=site.ports[0]),
            points=POINTS))
        await driver.open()
        try:
            await driver.write("f64_badc", -0.5, verify=True)
            await driver.write("relay", True, verify=True)
        finally:
            await driver.close()
        words = site._table(0, Table.HOLDING)[7:11]  # the test peeks at the memory
    raw = struct.pack(">d", -0.5)
    assert words == [int.from_bytes(raw[i + 1:i + 2] + raw[i:i + 1], "big")
                     for i in range(0, 8, 2)]


def test_set_bit() -> None:
    """set_bit sets and clears one bit and keeps the others."""
    assert set_bit(0x0100, 5, True) == 0x0120
    assert set_bit(0xFFFF, 0, False) == 0xFFFE
