"""End-to-end tests of the Modbus TCP driver against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import pytest

from edge_agent.config.model import DeviceConfig
from edge_agent.devtools.simulator import DEMO_POINTS, Profile, SimulatedSite
from edge_agent.drivers.base import DeviceTimeout, DeviceUnavailable, Quality, Sample
from edge_agent.drivers.modbus.config import (
    ByteOrder,
    DataType,
    ModbusPoint,
    ModbusTcpConnection,
    Table,
)
from edge_agent.drivers.modbus.driver import ModbusDriver

HOST = "127.0.0.1"
REGISTERS = 300


def point(name: str, address: int, type_: DataType = DataType.UINT16, *,
          table: Table = Table.HOLDING, order: ByteOrder = ByteOrder.ABCD,
          scale: float = 1.0) -> ModbusPoint:
    return ModbusPoint(name=name, interval_s=1.0, table=table, address=address, type=type_,
                       order=order, scale=scale)


def make_driver(port: int, points: Iterable[ModbusPoint], *, timeout_s: float = 2.0,
                max_gap: int = 0) -> ModbusDriver:
    return ModbusDriver(DeviceConfig(
        name="meter-1", driver="modbus_tcp",
        connection=ModbusTcpConnection(host=HOST, port=port, timeout_s=timeout_s,
                                       max_gap=max_gap),
        points=tuple(points)))


def values(samples: list[Sample]) -> dict[str, object]:
    return {n: v for s in samples for n, v in zip(s.names, s.values, strict=True)}


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    async with SimulatedSite(devices=1, registers=REGISTERS) as s:
        yield s


@pytest.fixture
async def opened() -> AsyncIterator[Callable[[ModbusDriver], Awaitable[ModbusDriver]]]:
    drivers: list[ModbusDriver] = []

    async def open_(driver: ModbusDriver) -> ModbusDriver:
        drivers.append(driver)
        await driver.open()
        return driver

    yield open_
    for driver in drivers:
        await driver.close()


Opener = Callable[[ModbusDriver], Awaitable[ModbusDriver]]


# -- raw TCP servers that misbehave --------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Starts plain asyncio TCP servers with a given connection handler; returns the port."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await handler(reader, writer)

        server = await asyncio.start_server(tracked, HOST, 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
    for writer in writers:
        writer.close()
    for server in servers:
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[int, int, int, int, int]:
    """One Modbus TCP request: transaction id, unit, function, address, count."""
    header = await reader.readexactly(7)
    tid, _pid, length, unit = struct.unpack(">HHHB", header)
    pdu = await reader.readexactly(length - 1)
    function, address, count = struct.unpack(">BHH", pdu[:5])
    return tid, unit, function, address, count


# -- reading values ------------------------------------------------------------------------

async def test_reads_every_type_and_order(site: SimulatedSite, opened: Opener) -> None:
    """Values set in the simulator come back decoded for each type and byte order."""
    site.set_registers(0, 0, [0x4366, 0x8000, 0x8000, 0x4366, 0x6643, 0x0080, 0x0080, 0x6643])
    site.set_registers(0, 8, [0xFFFF, 0xFFFE, 0xBEEF, 0xDEAD, 0xFFFE, 0x3412, 2305])
    points = [
        point("f_abcd", 0, DataType.FLOAT32),
        point("f_cdab", 2, DataType.FLOAT32, order=ByteOrder.CDAB),
        point("f_badc", 4, DataType.FLOAT32, order=ByteOrder.BADC),
        point("f_dcba", 6, DataType.FLOAT32, order=ByteOrder.DCBA),
        point("i32", 8, DataType.INT32),
        point("u32_cdab", 10, DataType.UINT32, order=ByteOrder.CDAB),
        point("i16", 12, DataType.INT16),
        point("u16_badc", 13, DataType.UINT16, order=ByteOrder.BADC),
        point("tenths", 14, scale=0.1),
    ]
    driver = await opened(make_driver(site.ports[0], points))
    got = values(await driver.read(driver.plan([p.name for p in points])))
    assert got == {"f_abcd": 230.5, "f_cdab": 230.5, "f_badc": 230.5, "f_dcba": 230.5,
                   "i32": -2, "u32_cdab": 0xDEADBEEF, "i16": -2, "u16_badc": 0x1234,
                   "tenths": pytest.approx(230.5)}


async def test_reads_each_table(site: SimulatedSite, opened: Opener) -> None:
    """Holding, input, coil and discrete tables are each read with their own function."""
    site.set_registers(0, 20, [111], table=Table.HOLDING)
    site.set_registers(0, 20, [222], table=Table.INPUT)
    site.set_bits(0, 20, [True, False, True], table=Table.COIL)
    site.set_bits(0, 20, [False, True], table=Table.DISCRETE)
    points = [
        point("hr", 20), point("ir", 20, table=Table.INPUT),
        point("co0", 20, DataType.BOOL, table=Table.COIL),
        point("co2", 22, DataType.BOOL, table=Table.COIL),
        point("di0", 20, DataType.BOOL, table=Table.DISCRETE),
        point("di1", 21, DataType.BOOL, table=Table.DISCRETE),
    ]
    driver = await opened(make_driver(site.ports[0], points))
    samples = await driver.read(driver.plan([p.name for p in points]))
    assert values(samples) == {"hr": 111, "ir": 222, "co0": True, "co2": True,
                               "di0": False, "di1": True}
    assert all(s.quality is Quality.GOOD and s.reason is None for s in samples)


async def test_sample_shape(site: SimulatedSite, opened: Opener) -> None:
    """One sample per block, named after the device, stamped at the response, names shared."""
    site.set_registers(0, 0, [1, 2])
    driver = await opened(make_driver(site.ports[0], [point("a", 0), point("b", 1)]))
    plan = driver.plan(["a", "b"])
    before = time.monotonic()  # samples carry monotonic time; the writer makes it UTC
    (first,) = await driver.read(plan)
    (second,) = await driver.read(plan)
    assert first.device == "meter-1"
    assert before <= first.ts <= second.ts <= time.monotonic()
    assert first.names == ("a", "b") and first.names is second.names
    assert list(first.values) == [1, 2]


async def test_exception_response_marks_only_its_block_bad(site: SimulatedSite,
                                                           opened: Opener) -> None:
    """An exception response makes its block a bad sample with the code; others stay good
    (a merged block refused as illegal address is split down to single points first)."""
    site.set_registers(0, 0, [5])
    points = [point("ok", 0), point("beyond", REGISTERS + 10), point("also_beyond",
                                                                      REGISTERS + 11)]
    driver = await opened(make_driver(site.ports[0], points))
    good, *bad = await driver.read(driver.plan([p.name for p in points]))
    assert (good.quality, list(good.values)) == (Quality.GOOD, [5])
    assert [(s.quality, s.names, list(s.values), s.reason) for s in bad] == [
        (Quality.BAD, (name,), [None], "modbus exception 2 (illegal data address)")
        for name in ("beyond", "also_beyond")]


async def test_plan_rejects_unknown_points(site: SimulatedSite) -> None:
    """plan() names the points the device does not have."""
    driver = make_driver(site.ports[0], [point("a", 0)])
    with pytest.raises(KeyError, match="nope"):
        driver.plan(["a", "nope"])


# -- failures ------------------------------------------------------------------------------

async def test_dead_port_is_unavailable() -> None:
    """Connecting to a port nobody listens on raises DeviceUnavailable naming host:port."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    driver = make_driver(port, [point("a", 0)])
    with pytest.raises(DeviceUnavailable, match=f"{HOST}:{port}"):
        await driver.open()
    await driver.close()


async def test_read_before_open_is_unavailable(site: SimulatedSite) -> None:
    """Reading a driver that is not open raises DeviceUnavailable, not a library error."""
    driver = make_driver(site.ports[0], [point("a", 0)])
    with pytest.raises(DeviceUnavailable, match="not connected"):
        await driver.read(driver.plan(["a"]))


async def test_silent_server_times_out(raw_server: Callable[[Handler], Awaitable[int]],
                                       opened: Opener) -> None:
    """A server that accepts and reads but never answers gives DeviceTimeout."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    driver = await opened(make_driver(await raw_server(silent), [point("a", 0)],
                                      timeout_s=0.2))
    with pytest.raises(DeviceTimeout):
        await driver.read(driver.plan(["a"]))


async def test_connection_reset_mid_request_is_unavailable(
        raw_server: Callable[[Handler], Awaitable[int]], opened: Opener) -> None:
    """A peer that drops the connection during a request fails the read at once as
    DeviceUnavailable, not after the timeout."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    driver = await opened(make_driver(await raw_server(hang_up), [point("a", 0)],
                                      timeout_s=30))
    with pytest.raises(DeviceUnavailable, match="connection lost") as info:
        await driver.read(driver.plan(["a"]))
    assert not isinstance(info.value, DeviceTimeout)


async def test_short_response_is_unavailable(raw_server: Callable[[Handler], Awaitable[int]],
                                             opened: Opener) -> None:
    """A well-framed response with fewer registers than asked raises DeviceUnavailable."""
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid, unit, function, _address, count = await read_request(reader)
        n = count - 1
        writer.write(struct.pack(f">HHHBBB{n}H", tid, 0, 3 + 2 * n, unit, function, 2 * n,
                                 *range(n)))
        await writer.drain()
        await reader.read()

    driver = await opened(make_driver(await raw_server(short), [point("f", 0, DataType.FLOAT32)],
                                      timeout_s=30))
    with pytest.raises(DeviceUnavailable, match="malformed"):
        await driver.read(driver.plan(["f"]))


async def test_garbage_is_unavailable(raw_server: Callable[[Handler], Awaitable[int]],
                                      opened: Opener) -> None:
    """Bytes that are not a Modbus response end the read with DeviceUnavailable (pymodbus
    drops unframeable bytes, so this surfaces as its DeviceTimeout subclass)."""
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"\xde\xad\xbe\xef" * 8)
        await writer.drain()
        await reader.read()

    driver = await opened(make_driver(await raw_server(garbage), [point("a", 0)],
                                      timeout_s=0.5))
    with pytest.raises(DeviceUnavailable):
        await driver.read(driver.plan(["a"]))


async def test_cancellation_propagates(raw_server: Callable[[Handler], Awaitable[int]],
                                       opened: Opener) -> None:
    """Cancelling a read in flight cancels the task; the driver does not swallow it."""
    received = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        received.set()
        await reader.read()

    driver = await opened(make_driver(await raw_server(silent), [point("a", 0)],
                                      timeout_s=30))
    task = asyncio.create_task(driver.read(driver.plan(["a"])))
    await received.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_recovers_after_server_restart(site: SimulatedSite, opened: Opener) -> None:
    """After the server stops, reads raise DeviceUnavailable; close()/open() recovers."""
    site.set_registers(0, 0, [42])
    driver = await opened(make_driver(site.ports[0], [point("a", 0)], timeout_s=0.5))
    plan = driver.plan(["a"])
    assert values(await driver.read(plan)) == {"a": 42}

    await site.stop(0)
    with pytest.raises(DeviceUnavailable):
        await driver.read(plan)
    await driver.close()
    with pytest.raises(DeviceUnavailable):
        await driver.open()

    await site.start(0)
    site.set_registers(0, 0, [43])
    await driver.close()
    await driver.open()
    assert values(await driver.read(plan)) == {"a": 43}


async def test_simulator_counter_profile_changes_values() -> None:
    """The simulator's counter profile sets register i of device d to (tick + d + i)."""
    async with SimulatedSite(devices=2, registers=10) as s:
        s.update()
        drivers = [make_driver(port, [point("r0", 0), point("r9", 9)]) for port in s.ports]
        try:
            for driver in drivers:
                await driver.open()
            got = [values(await d.read(d.plan(["r0", "r9"]))) for d in drivers]
        finally:
            for driver in drivers:
                await driver.close()
    assert got == [{"r0": 1, "r9": 10}, {"r0": 2, "r9": 11}]


async def test_simulator_demo_profile_is_plausible() -> None:
    """The demo profile serves the documented float32 meter values in plausible ranges."""
    async with SimulatedSite(profile=Profile.DEMO) as s:
        points = [point(name, address, DataType.FLOAT32) for name, address, _ in DEMO_POINTS]
        points.append(point("energy_import_wh", 100, DataType.UINT32, order=ByteOrder.CDAB))
        points.append(point("temperature_x10", 102, DataType.INT16, scale=0.1))
        driver = make_driver(s.ports[0], points, max_gap=100)
        await driver.open()
        try:
            got = values(await driver.read(driver.plan([p.name for p in points])))
        finally:
            await driver.close()
    assert 220 < got["voltage_l1"] < 240  # type: ignore[operator]
    assert 49.9 < got["frequency"] < 50.1  # type: ignore[operator]
    assert 0 < got["pm2_5"] < 60  # type: ignore[operator]
    assert got["temperature_x10"] == pytest.approx(got["temperature"], abs=0.051)
