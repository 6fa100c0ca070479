"""Modbus RTU on a real pseudo-terminal bus and RTU over TCP: shared buses, every encoding,
faults (dead slave, exception responses, garbage on the line, a vanishing port)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.model import DeviceConfig
from edge_agent.devtools.simulator import BusTransport, Corruption, SimulatedBus
from edge_agent.drivers.base import (
    DeviceTimeout,
    DeviceUnavailable,
    Quality,
    Sample,
)
from edge_agent.drivers.modbus.bus import BusSpec, rtu_frame_bytes
from edge_agent.drivers.modbus.config import (
    ByteOrder,
    DataType,
    ModbusPoint,
    ModbusRtuConnection,
    ModbusRtuOverTcpConnection,
    Parity,
    Table,
)
from edge_agent.drivers.modbus.driver import ModbusDriver
from edge_agent.scheduler.poller import DevicePoller
from edge_agent.telemetry.contract import DeviceEvent

T = DataType
BO = ByteOrder


def point(name: str, address: int, type_: DataType = DataType.UINT16, *,
          table: Table = Table.HOLDING, order: ByteOrder = ByteOrder.ABCD,
          interval_s: float = 1.0, **kwargs: Any) -> ModbusPoint:
    return ModbusPoint(name=name, interval_s=interval_s, table=table, address=address,
                       type=type_, order=order, **kwargs)


def device(bus: SimulatedBus, unit: int, points: Iterable[ModbusPoint], *,
           timeout_s: float = 0.5, max_gap: int = 0, name: str | None = None,
           reconnect_initial_s: float = 1.0, reconnect_max_s: float = 60.0) -> DeviceConfig:
    connection: ModbusRtuConnection | ModbusRtuOverTcpConnection
    if bus.transport is BusTransport.SERIAL:
        connection = ModbusRtuConnection(port=bus.port, unit_id=unit, baudrate=115200,
                                         timeout_s=timeout_s, max_gap=max_gap)
    else:
        connection = ModbusRtuOverTcpConnection(host=bus.host, port=bus.tcp_port,
                                                unit_id=unit, timeout_s=timeout_s,
                                                max_gap=max_gap)
    return DeviceConfig(name=name or f"unit-{unit}", driver="modbus_rtu",
                        connection=connection, points=tuple(points),
                        reconnect_initial_s=reconnect_initial_s,
                        reconnect_max_s=reconnect_max_s)


def values(samples: list[Sample]) -> dict[str, object]:
    return {n: v for s in samples for n, v in zip(s.names, s.values, strict=True)}


Opener = Callable[[DeviceConfig], Awaitable[ModbusDriver]]


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    drivers: list[ModbusDriver] = []

    async def open_(config: DeviceConfig) -> ModbusDriver:
        driver = ModbusDriver(config)
        drivers.append(driver)
        await driver.open()
        return driver

    yield open_
    for driver in drivers:
        await driver.close()


@pytest.fixture(params=[BusTransport.SERIAL, BusTransport.TCP])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SimulatedBus]:
    async with SimulatedBus(units=(1, 2, 3), transport=request.param,
                            tmp_dir=str(tmp_path)) as b:
        yield b


@pytest.fixture
async def serial_bus(tmp_path: Path) -> AsyncIterator[SimulatedBus]:
    async with SimulatedBus(units=(1, 2, 3), tmp_dir=str(tmp_path)) as b:
        yield b


# -- every encoding, written into the registers by hand ----------------------------------

def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def device_words(big_endian: bytes, order: ByteOrder) -> list[int]:
    """How a device in ``order`` stores a value with these big-endian bytes."""
    words = list(struct.unpack(f">{len(big_endian) // 2}H", big_endian))
    if order in (BO.BADC, BO.DCBA):
        words = [_swap(w) for w in words]
    if order in (BO.CDAB, BO.DCBA):
        words.reverse()
    return words


ENCODINGS: list[tuple[DataType, str, object]] = [
    (T.INT16, ">h", -1234), (T.UINT16, ">H", 54321),
    (T.INT32, ">i", -123456789), (T.UINT32, ">I", 3_000_000_000),
    (T.INT64, ">q", -(2**62) - 5), (T.UINT64, ">Q", 2**64 - 3),
    (T.FLOAT32, ">f", -1.5), (T.FLOAT64, ">d", 6.02214076e23),
]


async def test_every_encoding_in_every_order_reads_back(bus: SimulatedBus,
                                                        opened: Opener) -> None:
    """Each type in each byte order, plus strings, bits, coils, enums and bitfields, reads
    back from registers the test wrote, over RTU on a pty and RTU over TCP."""
    points: list[ModbusPoint] = []
    expected: dict[str, object] = {}
    address = 0
    for type_, fmt, value in ENCODINGS:
        for order in ByteOrder:
            name = f"{type_.value}_{order.value}"
            words = device_words(struct.pack(fmt, value), order)
            bus.set_registers(1, address, words)
            points.append(point(name, address, type_, order=order))
            expected[name] = value
            address += len(words)
    bus.set_registers(1, address, [0x4142, 0x4344, 0x4500])           # "ABCDE"
    bus.set_registers(1, address + 3, [0x4241, 0x4443, 0x0045])       # "ABCDE", swapped
    bus.set_registers(1, address + 6, [0b1000_0000_0000_0100, 2, 5])  # bits, enum, bitfield
    bus.set_bits(1, 7, [True, False, True], table=Table.COIL)
    bus.set_bits(1, 3, [True], table=Table.DISCRETE)
    points += [
        point("s_abcd", address, T.STRING, count=3),
        point("s_badc", address + 3, T.STRING, order=BO.BADC, count=3),
        point("bit2", address + 6, T.BOOL, bit=2),
        point("bit15", address + 6, T.BOOL, bit=15),
        point("bit0", address + 6, T.BOOL, bit=0),
        point("mode", address + 7, T.UINT16, enum=((1, "idle"), (2, "run"))),
        point("alarms", address + 8, T.UINT16, bits=((0, "door"), (2, "heat"))),
        point("coil7", 7, T.BOOL, table=Table.COIL),
        point("coil9", 9, T.BOOL, table=Table.COIL),
        point("di3", 3, T.BOOL, table=Table.DISCRETE),
    ]
    expected.update(s_abcd="ABCDE", s_badc="ABCDE", bit2=True, bit15=True, bit0=False,
                    mode="run", alarms="door,heat", coil7=True, coil9=True, di3=True)
    driver = await opened(device(bus, 1, points, max_gap=10))
    samples = await driver.read(driver.plan([p.name for p in points]))
    assert all(s.quality is Quality.GOOD for s in samples)
    assert values(samples) == expected


# -- one bus, several units --------------------------------------------------------------

async def test_units_on_one_bus_share_one_connection(bus: SimulatedBus, opened: Opener) -> None:
    """Devices on one port share one connection; closing one keeps it open for the other."""
    bus.set_registers(1, 0, [11])
    bus.set_registers(2, 0, [22])
    one = await opened(device(bus, 1, [point("a", 0)]))
    two = await opened(device(bus, 2, [point("a", 0)]))
    assert one.bus is two.bus and one.bus is not None
    shared = one.bus
    assert values(await one.read(one.plan(["a"]))) == {"a": 11}
    await one.close()
    assert values(await two.read(two.plan(["a"]))) == {"a": 22}
    assert shared.stats.connects == 1 and shared.users == 1


async def test_dead_slave_times_out_without_disturbing_the_others(
        bus: SimulatedBus, opened: Opener) -> None:
    """A unit that never answers gives DeviceTimeout; the bus stays open for the others."""
    bus.set_registers(2, 0, [22])
    bus.mute(3)
    dead = await opened(device(bus, 3, [point("a", 0)], timeout_s=0.1))
    alive = await opened(device(bus, 2, [point("a", 0)]))
    with pytest.raises(DeviceTimeout, match="unit 3"):
        await dead.read(dead.plan(["a"]))
    assert values(await alive.read(alive.plan(["a"]))) == {"a": 22}
    assert alive.bus is not None and alive.bus.stats.connects == 1
    assert alive.bus.stats.timeouts == 1


async def test_scheduler_isolates_a_dead_slave(serial_bus: SimulatedBus) -> None:
    """Under the scheduler, healthy units on the bus keep polling while a dead unit is
    retried at a backed-off rate: far fewer attempts than the healthy units' polls."""
    bus = serial_bus
    bus.mute(3)
    target = 40
    good: dict[str, int] = {"unit-1": 0, "unit-2": 0}
    events: list[DeviceEvent] = []
    done = asyncio.Event()

    async def sink(item: Sample | DeviceEvent) -> None:
        if isinstance(item, DeviceEvent):
            events.append(item)
        elif item.quality is Quality.GOOD:
            good[item.device] += 1
            if min(good.values()) >= target:
                done.set()

    configs = [device(bus, unit, [point("a", 0, interval_s=0.02)], timeout_s=0.1,
                      reconnect_initial_s=0.05, reconnect_max_s=1.0) for unit in (1, 2, 3)]
    pollers = [DevicePoller(c, ModbusDriver(c), sink) for c in configs]
    tasks = [asyncio.create_task(p.run(), name=p.device.name) for p in pollers]
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    dead_attempts = bus.requests[3]
    assert dead_attempts >= 1
    assert dead_attempts * 4 < min(good.values())
    assert [(e.device, e.state) for e in events if e.device == "unit-3"] == [
        ("unit-3", "unavailable")]
    assert all(e.state == "available" for e in events if e.device != "unit-3")


async def test_device_disappearing_and_coming_back_changes_state_once(
        serial_bus: SimulatedBus) -> None:
    """A unit that stops answering becomes unavailable once, and available once it answers
    again; a neighbour on the bus stays available throughout."""
    bus = serial_bus
    events: list[tuple[str, str]] = []
    changed = asyncio.Event()

    async def sink(item: Sample | DeviceEvent) -> None:
        if isinstance(item, DeviceEvent):
            events.append((item.device, item.state))
            changed.set()

    async def state_becomes(name: str, state: str) -> None:
        while (name, state) not in events:
            changed.clear()
            await changed.wait()

    configs = [device(bus, unit, [point("a", 0, interval_s=0.02)], timeout_s=0.1,
                      reconnect_initial_s=0.02, reconnect_max_s=0.1) for unit in (1, 2)]
    tasks = [asyncio.create_task(DevicePoller(c, ModbusDriver(c), sink).run())
             for c in configs]
    try:
        async with asyncio.timeout(30):
            await state_becomes("unit-1", "available")
            bus.mute(1)
            await state_becomes("unit-1", "unavailable")
            bus.unmute(1)
            while events.count(("unit-1", "available")) < 2:
                changed.clear()
                await changed.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [e for e in events if e[0] == "unit-1"] == [
        ("unit-1", "available"), ("unit-1", "unavailable"), ("unit-1", "available")]
    assert [e for e in events if e[0] == "unit-2"] == [("unit-2", "available")]


# -- exception responses -----------------------------------------------------------------

@pytest.mark.parametrize(("code", "reason"), [(4, "modbus exception 4 (server device failure)"),
                                              (6, "modbus exception 6 (server device busy)")])
async def test_exception_response_is_bad_quality_with_reason(
        bus: SimulatedBus, opened: Opener, code: int, reason: str) -> None:
    """An exception response other than illegal address marks the block bad with its code;
    the device stays connected and the next poll is good again."""
    bus.set_registers(1, 0, [1, 2])
    driver = await opened(device(bus, 1, [point("a", 0), point("b", 1)]))
    plan = driver.plan(["a", "b"])
    bus.fail_with(1, code)
    (sample,) = await driver.read(plan)
    assert (sample.quality, list(sample.values), sample.reason) == (Quality.BAD, [None, None],
                                                                   reason)
    bus.fail_with(1, None)
    assert values(await driver.read(plan)) == {"a": 1, "b": 2}
    assert len(plan.blocks) == 1


async def test_illegal_address_splits_block_and_remembers(bus: SimulatedBus,
                                                          opened: Opener) -> None:
    """A merged block refused as illegal address is split until only the undefined point is
    bad; the following polls read the remembered halves, not the refused block."""
    bus.set_registers(1, 0, [10, 11, 12, 13, 14, 15])
    bus.set_invalid(1, 2)
    names = [f"r{i}" for i in (0, 1, 2, 3, 5)]
    driver = await opened(device(bus, 1, [point(n, int(n[1:])) for n in names], max_gap=5))
    plan = driver.plan(names)
    assert [(b.start, b.count) for b in plan.blocks] == [(0, 6)]
    samples = await driver.read(plan)
    assert values(samples) == {"r0": 10, "r1": 11, "r2": None, "r3": 13, "r5": 15}
    bad = [s for s in samples if s.quality is Quality.BAD]
    assert [(s.names, s.reason) for s in bad] == [
        (("r2",), "modbus exception 2 (illegal data address)")]
    remembered = [(b.start, b.count) for b in plan.blocks]
    assert remembered == [(0, 2), (2, 1), (3, 3)]
    before = bus.requests[1]
    assert values(await driver.read(plan)) == {"r0": 10, "r1": 11, "r2": None, "r3": 13,
                                               "r5": 15}
    assert bus.requests[1] - before == len(remembered)


# -- garbage on the line, a vanishing port -----------------------------------------------

@pytest.mark.parametrize("how", list(Corruption))
async def test_garbage_on_the_line_is_a_timeout_not_a_stall(
        bus: SimulatedBus, opened: Opener, how: Corruption) -> None:
    """A response with a broken CRC, noise, or noise before it fails that read only (bad
    quality); the next reads of that unit and of its neighbours are good, the port is not
    reopened."""
    bus.set_registers(1, 0, [7])
    bus.set_registers(2, 0, [8])
    one = await opened(device(bus, 1, [point("a", 0)], timeout_s=0.2))
    two = await opened(device(bus, 2, [point("a", 0)], timeout_s=0.2))
    bus.corrupt(1, how)
    try:
        result = values(await one.read(one.plan(["a"])))
    except DeviceTimeout:
        result = {}
    # pymodbus's RTU framer may find the valid frame after a noise prefix: then it is good.
    assert result in ({}, {"a": 7})
    assert how is Corruption.PREFIX or result == {}
    assert values(await two.read(two.plan(["a"]))) == {"a": 8}
    assert values(await one.read(one.plan(["a"]))) == {"a": 7}
    assert one.bus is not None and one.bus.stats.connects == 1


async def test_vanished_port_fails_every_device_then_reopens(serial_bus: SimulatedBus,
                                                             opened: Opener) -> None:
    """When the serial port disappears every device on it gets DeviceUnavailable; once it
    is back, reopening the devices reconnects the bus once and reads work again."""
    bus = serial_bus
    bus.set_registers(1, 0, [1])
    bus.set_registers(2, 0, [2])
    one = await opened(device(bus, 1, [point("a", 0)], timeout_s=0.3))
    two = await opened(device(bus, 2, [point("a", 0)], timeout_s=0.3))
    shared = one.bus
    assert shared is not None
    await bus.stop()
    for driver in (one, two):
        with pytest.raises(DeviceUnavailable):
            await driver.read(driver.plan(["a"]))
        await driver.close()
    with pytest.raises(DeviceUnavailable):
        await one.open()
    await bus.start()
    for driver in (one, two):
        await driver.open()
    assert values(await one.read(one.plan(["a"]))) == {"a": 1}
    assert values(await two.read(two.plan(["a"]))) == {"a": 2}
    assert shared.stats.connects == 2


async def test_port_refusing_line_settings_is_unavailable(serial_bus: SimulatedBus) -> None:
    """A serial port that rejects the line settings (a pty refuses even parity) raises
    DeviceUnavailable naming the port, not the library's own error."""
    driver = ModbusDriver(DeviceConfig(
        name="even", driver="modbus_rtu", points=(point("a", 0),),
        connection=ModbusRtuConnection(port=serial_bus.port, unit_id=1, parity=Parity.EVEN)))
    with pytest.raises(DeviceUnavailable, match=f"cannot open {serial_bus.port}"):
        await driver.open()
    await driver.close()


# -- line timing figures -----------------------------------------------------------------

@pytest.mark.parametrize(("baud", "parity", "stopbits", "silent_s"), [
    (9600, Parity.NONE, 1, 3.5 * 10 / 9600),
    (9600, Parity.EVEN, 1, 3.5 * 11 / 9600),
    (19200, Parity.NONE, 2, 3.5 * 11 / 19200),
    (38400, Parity.NONE, 1, 0.00175),
    (115200, Parity.ODD, 1, 0.00175),
])
def test_silent_interval(baud: int, parity: Parity, stopbits: int, silent_s: float) -> None:
    """3.5 character times at the configured line settings; 1.75 ms above 19200 baud."""
    spec = BusSpec.of(ModbusRtuConnection(port="/dev/x", baudrate=baud, parity=parity,
                                          stopbits=stopbits))
    assert spec.silent_s == pytest.approx(silent_s)


def test_rtu_frame_sizes() -> None:
    """Request and response sizes of each function, as counted for line time."""
    assert rtu_frame_bytes(3, 10) == (8, 25)
    assert rtu_frame_bytes(1, 9) == (8, 7)
    assert rtu_frame_bytes(16, 2) == (13, 8)


async def test_bus_figures_count_requests_and_line_time(serial_bus: SimulatedBus,
                                                        opened: Opener) -> None:
    """Requests, answers, busy time and line time are counted per bus."""
    driver = await opened(device(serial_bus, 1, [point("a", 0, T.FLOAT32)]))
    plan = driver.plan(["a"])
    for _ in range(3):
        await driver.read(plan)
    stats = driver.bus_stats
    assert stats is not None
    assert (stats.requests, stats.answers, stats.timeouts) == (3, 3, 0)
    char_s = 10 / 115200
    assert stats.line_s == pytest.approx(3 * ((8 + 9) * char_s + 2 * 0.00175))
    assert 0 < stats.utilisation() <= 1 and stats.busy_s >= 3 * 0.00175
    assert len(stats.waits_s) == 3
