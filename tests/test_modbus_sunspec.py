"""SunSpec scale factors against real Modbus servers: values read back scaled, markers of
"not implemented" as null, the exponent read in the same poll, writes through it."""

from __future__ import annotations

import re
import struct
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.config.model import DeviceConfig
from edge_agent.devtools.simulator import BusTransport, SimulatedBus, SimulatedSite
from edge_agent.drivers.base import Quality, Sample
from edge_agent.drivers.modbus.config import Table
from edge_agent.drivers.modbus.driver import InvalidWrite, ModbusDriver
from edge_agent.scheduler.poller import poll_groups

EXAMPLE = Path(__file__).parent.parent / "deploy" / "examples" / "sunspec-inverter-tcp.yaml"

HEAD = """\
gateway: {id: gw-1, site: roof}
uplink: {host: 127.0.0.1, topic_prefix: city, security: plaintext}
buffer: {path: buffer.db}
devices:
  - name: inverter
    driver: modbus_rtu_over_tcp
"""


MakeDriver = Callable[..., Awaitable[ModbusDriver]]


def s16(value: int) -> int:
    """The register of a signed 16-bit value."""
    return value & 0xFFFF


def text(value: str, registers: int) -> list[int]:
    """The registers of a NUL-padded string (first character in the high byte)."""
    return list(struct.unpack(f">{registers}H", value.encode().ljust(2 * registers, b"\0")))


def published(samples: list[Sample]) -> dict[str, Any]:
    """Name -> value of good samples."""
    assert all(s.quality is Quality.GOOD for s in samples)
    return {n: v for s in samples for n, v in zip(s.names, s.values, strict=True)}


@pytest.fixture
async def bus() -> AsyncIterator[SimulatedBus]:
    """One RTU unit behind a serial device server on 127.0.0.1, 100 registers."""
    async with SimulatedBus(units=(1,), registers=100, transport=BusTransport.TCP) as b:
        yield b


@pytest.fixture
async def make_driver(bus: SimulatedBus, tmp_path: Path) -> AsyncIterator[MakeDriver]:
    """``await make_driver(points_yaml, max_gap=0)``: an open driver of a device on ``bus``
    whose points are given as YAML (validated as in a configuration file)."""
    drivers: list[ModbusDriver] = []

    async def make(points: str, *, max_gap: int = 0) -> ModbusDriver:
        config = parse_config(
            HEAD + f"    connection: {{host: 127.0.0.1, port: {bus.tcp_port}, timeout_s: 2, "
            f"max_gap: {max_gap}}}\n    points:\n"
            + textwrap.indent(textwrap.dedent(points), "      "), base_dir=tmp_path)
        driver = ModbusDriver(config.devices[0])
        drivers.append(driver)
        await driver.open()
        return driver

    yield make
    for driver in drivers:
        await driver.close()


async def poll(driver: ModbusDriver, *names: str) -> dict[str, Any]:
    """One poll of ``names``, as name -> value."""
    return published(await driver.read(driver.plan(names)))


SUNSPEC_BASE = 40000
SUNSPEC_REGISTERS = 123
"""The simulator holds the SunSpec range from 0: pymodbus builds its tables in quadratic
time, and 40123 registers take most of a minute."""


def rebased(config_text: str) -> str:
    """``config_text`` with every ``address`` moved down by :data:`SUNSPEC_BASE`."""
    def move(match: re.Match[str]) -> str:
        address = int(match.group(1)) - SUNSPEC_BASE
        assert 0 <= address < SUNSPEC_REGISTERS
        return f"address: {address}"

    return re.sub(r"address: (\d+)", move, config_text)


async def test_example_inverter_map_publishes_scaled_values(tmp_path: Path) -> None:
    """The example SunSpec map (rebased to address 0), polled from a simulated inverter,
    gives every model 103 value as raw x 10^sf, null where SunSpec says "not implemented",
    and no *_sf points."""
    (tmp_path / "certs").mkdir()
    for name in ("platform-ca.pem", "gw.pem", "gw.key"):
        (tmp_path / "certs" / name).write_text("stub")
    async with SimulatedSite(registers=SUNSPEC_REGISTERS) as site:
        # register n is SunSpec address 40000 + n: marker, model 1, model 103 header
        site.set_registers(0, 0, [0x5375, 0x6E53, 1, 65, *text("Fronius", 16),
                                  *text("Symo 5.0-3-M", 16), *text("", 8), *text("1.2.3", 8),
                                  *text("SN-0042", 16), 1, 0, 103, 50])
        site.set_registers(0, 72, [
            1234, 411, 412, 0xFFFF, s16(-2),         # A, AphA..C (C not implemented), A_SF
            4000, 4001, 3999, 2301, 2302, 2303, s16(-1),  # PPV*, PhV*, V_SF
            4520, 0,                                 # W, W_SF
            5001, s16(-2),                           # Hz, Hz_SF
            4600, 0,                                 # VA, VA_SF
            s16(-300), 0,                            # VAr, VAr_SF
            98, 0x8000,                              # PF, PF_SF not implemented
            0x075B, 0xCD15, 1,                       # WH 123456789, WH_SF
            1050, 11,                                # DCA, DCA_SF outside -10..10
            6500, s16(-1),                           # DCV, DCV_SF
            4700, 0,                                 # DCW, DCW_SF
            0x8000, 455, 0, 0, s16(-1),              # TmpCab not implemented, TmpSnk, Tmp_SF
            4, 0, 0, 0x0081,                         # St mppt, StVnd, Evt1
        ])
        example = EXAMPLE.read_text()
        assert "host: 192.0.2.40, port: 502" in example
        example = example.replace("host: 192.0.2.40, port: 502",
                                  f"host: 127.0.0.1, port: {site.ports[0]}")
        config = parse_config(rebased(example), source=EXAMPLE.name, base_dir=tmp_path)
        device = config.devices[0]
        driver = ModbusDriver(device)
        await driver.open()
        try:
            got: dict[str, Any] = {}
            for group in poll_groups(device):
                got |= published(await driver.read(driver.plan(group.names)))
        finally:
            await driver.close()
    assert got == {
        "sunspec_marker": "SunS", "common_id": 1, "manufacturer": "Fronius",
        "model": "Symo 5.0-3-M", "options": "", "firmware": "1.2.3",
        "serial_number": "SN-0042", "device_address": 1, "inverter_id": 103,
        "current": 12.34, "current_l1": 4.11, "current_l2": 4.12, "current_l3": None,
        "voltage_l1_l2": 400.0, "voltage_l2_l3": 400.1, "voltage_l3_l1": 399.9,
        "voltage_l1": 230.1, "voltage_l2": 230.2, "voltage_l3": 230.3,
        "ac_power": 4520.0, "frequency": 50.01, "apparent_power": 4600.0,
        "reactive_power": -300.0, "power_factor": None, "energy_total": 1234567890.0,
        "dc_current": None, "dc_voltage": 650.0, "dc_power": 4700.0,
        "cabinet_temperature": None, "heatsink_temperature": 45.5,
        "operating_state": "mppt", "vendor_state": 0, "events": "ground_fault,over_temp",
    }


async def test_scale_factor_is_read_in_every_poll(bus: SimulatedBus,
                                                  make_driver: MakeDriver) -> None:
    """The exponent is read with the value at each poll, so a changed scale factor
    applies at once (the register pair of a SunSpec device changes together)."""
    driver = await make_driver("""\
        - {name: power, table: holding, address: 10, type: int16, scale_factor: power_sf}
        - {name: power_sf, table: holding, address: 11, type: int16}
    """)
    bus.set_registers(1, 10, [1234, s16(-1)])
    assert await poll(driver, "power") == {"power": 123.4}
    bus.set_registers(1, 10, [1234, s16(2)])
    assert await poll(driver, "power") == {"power": 123400.0}


async def test_scale_factor_in_another_block_of_the_poll(bus: SimulatedBus,
                                                         make_driver: MakeDriver) -> None:
    """A scale factor outside the value's read (far away, another table, merge: false) is
    read in the same poll and applied; its own read publishes nothing."""
    driver = await make_driver("""\
        - {name: a, table: holding, address: 0, type: uint16, scale_factor: far_sf}
        - {name: b, table: holding, address: 1, type: uint32, scale_factor: input_sf}
        - {name: c, table: holding, address: 3, type: int16, scale_factor: alone_sf}
        - {name: far_sf, table: holding, address: 60, type: int16}
        - {name: input_sf, table: input, address: 0, type: int16}
        - {name: alone_sf, table: holding, address: 4, type: int16, merge: false}
    """)
    bus.set_registers(1, 0, [15, *divmod(70000, 0x10000), s16(-4), s16(-3)])
    bus.set_registers(1, 60, [1])
    bus.set_registers(1, 0, [s16(-2)], table=Table.INPUT)
    plan = driver.plan(["a", "b", "c"])
    assert [(b.table.value, b.start, b.count, b.names) for b in plan.blocks] == [
        ("holding", 0, 4, ("a", "b", "c")), ("holding", 4, 1, ()), ("holding", 60, 1, ()),
        ("input", 0, 1, ())]
    samples = await driver.read(plan)
    assert len(samples) == 1
    assert published(samples) == {"a": 150.0, "b": 700.0, "c": -0.004}


async def test_scale_factor_shared_by_two_intervals_is_in_both_polls(
        bus: SimulatedBus, make_driver: MakeDriver) -> None:
    """Points of different poll intervals that share a scale factor each get it in their
    own poll."""
    driver = await make_driver("""\
        - {name: fast, table: holding, address: 0, type: uint16, interval_s: 1,
           scale_factor: sf}
        - {name: slow, table: holding, address: 5, type: uint16, interval_s: 60,
           scale_factor: sf}
        - {name: sf, table: holding, address: 6, type: int16}
    """, max_gap=2)
    bus.set_registers(1, 0, [42, 0, 0, 0, 0, 43, s16(-1)])
    assert await poll(driver, "fast") == {"fast": 4.2}
    assert await poll(driver, "slow") == {"slow": 4.3}


async def test_scale_and_offset_apply_after_the_scale_factor(bus: SimulatedBus,
                                                             make_driver: MakeDriver) -> None:
    """raw x 10^sf gives the SunSpec unit; scale and offset then convert it (Wh to kWh)."""
    driver = await make_driver("""\
        - {name: energy_kwh, table: holding, address: 0, type: uint32, scale: 0.001,
           offset: 1, scale_factor: energy_sf}
        - {name: energy_sf, table: holding, address: 2, type: int16}
    """)
    bus.set_registers(1, 0, [0, 12345, 2])
    assert await poll(driver, "energy_kwh") == {"energy_kwh": pytest.approx(1235.5)}


@pytest.mark.parametrize(("type_", "words", "sf", "expected"), [
    ("int16", [0x8000], 0, None),
    ("uint16", [0xFFFF], 0, None),
    ("int32", [0x8000, 0], 0, None),
    ("uint32", [0xFFFF, 0xFFFF], 0, None),
    ("int64", [0x8000, 0, 0, 0], 0, None),
    ("uint64", [0xFFFF] * 4, 0, None),
    ("int16", [0x8001], 0, -32767.0),
    ("uint16", [0xFFFE], 0, 65534.0),
    ("uint16", [7], -32768, None),
    ("uint16", [7], 11, None),
    ("uint16", [7], -11, None),
    ("uint16", [7], 10, 7e10),
    ("uint16", [7], -10, 7e-10),
])
async def test_not_implemented_and_invalid_scale_factors_give_null(
        bus: SimulatedBus, make_driver: MakeDriver, type_: str, words: list[int], sf: int,
        expected: float | None) -> None:
    """SunSpec's "not implemented" value of each type, a "not implemented" scale factor
    (-32768) and one outside -10..10 give null; the values next to them are numbers."""
    driver = await make_driver(f"""\
        - {{name: v, table: holding, address: 0, type: {type_}, scale_factor: v_sf}}
        - {{name: v_sf, table: holding, address: 10, type: int16}}
    """, max_gap=10)
    bus.set_registers(1, 0, words)
    bus.set_registers(1, 10, [s16(sf)])
    assert await poll(driver, "v") == {"v": expected}


async def test_unreadable_scale_factor_gives_null(bus: SimulatedBus, make_driver: MakeDriver
                                                  ) -> None:
    """A scale factor the device refuses to read leaves the value null; the value's own
    read stays good and the refused read publishes nothing."""
    driver = await make_driver("""\
        - {name: v, table: holding, address: 0, type: uint16, scale_factor: v_sf}
        - {name: v_sf, table: holding, address: 1, type: int16, merge: false}
    """)
    bus.set_registers(1, 0, [5, 1])
    bus.set_invalid(1, 1)
    samples = await driver.read(driver.plan(["v"]))
    assert [(s.quality, s.names, list(s.values)) for s in samples] == [
        (Quality.GOOD, ("v",), [None])]


async def test_write_through_scale_factor(bus: SimulatedBus, make_driver: MakeDriver) -> None:
    """A write divides by 10^sf as read from the device, and reads back as written."""
    driver = await make_driver("""\
        - {name: limit, table: holding, address: 0, type: uint16, unit: "%",
           scale_factor: limit_sf}
        - {name: limit_sf, table: holding, address: 1, type: int16}
    """)
    bus.set_registers(1, 1, [s16(-1)])
    await driver.write("limit", 87.5, verify=True)
    assert bus.table(1)[0] == 875
    assert await poll(driver, "limit") == {"limit": 87.5}


async def test_write_with_invalid_scale_factor_writes_nothing(bus: SimulatedBus,
                                                              make_driver: MakeDriver) -> None:
    """When the scale factor reads "not implemented" the write is refused after that read
    and nothing is written."""
    driver = await make_driver("""\
        - {name: limit, table: holding, address: 0, type: uint16, scale_factor: limit_sf}
        - {name: limit_sf, table: holding, address: 1, type: int16}
    """)
    bus.set_registers(1, 0, [3, 0x8000])
    with pytest.raises(InvalidWrite, match=r"limit: its scale factor limit_sf reads -32768"):
        await driver.write("limit", 50)
    assert bus.table(1)[0] == 3
    assert [f for _, f in bus.functions] == [3]


def test_planned_with_the_scale_factor(tmp_path: Path) -> None:
    """A plan of a point holds its scale factor point even when not asked for, merged
    into the same read when adjacent; the scale factor is not a published name."""
    config = parse_config(HEAD + """\
    connection: {host: 127.0.0.1}
    points:
      - {name: w, table: holding, address: 0, type: int16, scale_factor: w_sf}
      - {name: w_sf, table: holding, address: 1, type: int16}
""", base_dir=tmp_path)
    device: DeviceConfig = config.devices[0]
    plan = ModbusDriver(device).plan(["w"])
    assert [(b.start, b.count, b.names, [p.name for p in b.points]) for b in plan.blocks] \
        == [(0, 2, ("w",), ["w", "w_sf"])]
