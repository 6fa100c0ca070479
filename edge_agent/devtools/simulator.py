"""A simulated field site: Modbus TCP devices on the loopback, and RS-485 buses of RTU slaves
(:class:`SimulatedBus`: a serial line on a pseudo-terminal pair, or RTU framed over TCP),
for the demo, tests and benchmark.

Each simulated device is a pymodbus TCP server on its own port, answering unit id 1, with
``registers`` holding registers, input registers, coils and discrete inputs from address 0
(reading past the end gives exception 2, illegal data address)::

    async with SimulatedSite(devices=2, registers=200) as site:
        site.set_registers(0, 10, [1, 2, 3])            # holding registers 10..12 of device 0
        site.set_bits(1, 5, [True, False], table=Table.DISCRETE)
        port = site.ports[0]

Run it standalone (the benchmark does, in a separate process)::

    python -m edge_agent.devtools.simulator --devices 10 --registers 1000 --base-port 15020
    python -m edge_agent.devtools.simulator --profile demo --base-port 15020

It prints one ``listening ...`` line when every device accepts connections and runs until
SIGINT or SIGTERM.

Profiles
--------
``counter`` (default): at every update, holding and input register ``i`` of device ``d``
hold ``(tick + d + i) % 65536`` and coil/discrete input ``i`` holds ``(tick + i) % 2``.

``demo``: every device looks like a three-phase energy meter with an air-quality station,
values changing plausibly over time (device ``d`` is phase-shifted by ``d``). Holding
registers, float32, byte order ABCD unless noted:

=======  ==========================  ========  =========================
address  name                        unit      typical value
=======  ==========================  ========  =========================
0        voltage_l1                  V         230 +- 3
2        voltage_l2                  V         230 +- 3
4        voltage_l3                  V         230 +- 3
6        current_l1                  A         8..22
8        current_l2                  A         8..22
10       current_l3                  A         8..22
12       power_factor                          0.90..0.99
14       active_power                W         sum of V * I * pf
16       frequency                   Hz        50 +- 0.05
18       energy_import               kWh       increasing
20       pm2_5                       ug/m3     5..30
22       pm10                        ug/m3     10..50
24       temperature                 degC      12..26
26       humidity                    %         40..80
28       co2                         ppm       420..900
100      energy_import_wh (uint32,   Wh        increasing
         order CDAB)
102      temperature_x10 (int16,     0.1 degC  use scale 0.1
         scale 0.1)
=======  ==========================  ========  =========================

Input register 0 (uint16) counts updates; coil 0 is true while the meter "relay" is on.
Other addresses read as 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.drivers.modbus.config import Table

__all__ = ["DEMO_POINTS", "BusTransport", "Corruption", "Profile", "SimulatedBus",
           "SimulatedSite", "main"]

UNIT_ID = 1
_BLOCK_KEY = {Table.COIL: "c", Table.DISCRETE: "d", Table.HOLDING: "h", Table.INPUT: "i"}


class Profile(StrEnum):
    """How the background task changes the values."""

    COUNTER = "counter"
    DEMO = "demo"


DEMO_POINTS: tuple[tuple[str, int, str], ...] = (
    ("voltage_l1", 0, "V"), ("voltage_l2", 2, "V"), ("voltage_l3", 4, "V"),
    ("current_l1", 6, "A"), ("current_l2", 8, "A"), ("current_l3", 10, "A"),
    ("power_factor", 12, ""), ("active_power", 14, "W"), ("frequency", 16, "Hz"),
    ("energy_import", 18, "kWh"), ("pm2_5", 20, "ug/m3"), ("pm10", 22, "ug/m3"),
    ("temperature", 24, "degC"), ("humidity", 26, "%"), ("co2", 28, "ppm"),
)
"""The float32 holding registers of the demo profile: (name, address, unit)."""
_DEMO_MIN_REGISTERS = 104
_DEMO_FLOATS = struct.Struct(f">{len(DEMO_POINTS)}f")
_DEMO_WORDS = struct.Struct(f">{2 * len(DEMO_POINTS)}H")


@dataclass(slots=True)
class _Memory:
    """The four tables of one device, as pymodbus's runtime lists (shared across restarts)."""

    blocks: dict[str, tuple[int, int, list[int], list[int]]]

    def registers(self, table: Table) -> list[int]:
        return self.blocks[_BLOCK_KEY[table]][2]


class SimulatedSite:
    """``devices`` simulated Modbus TCP devices on ``host``, one port each.

    ``base_port=0`` lets the OS choose free ports; otherwise device ``d`` listens on
    ``base_port + d``. With ``update_interval_s`` set, a background task changes the
    values according to ``profile``; without it the values only change through
    :meth:`set_registers` and :meth:`set_bits`.
    """

    def __init__(self, *, devices: int = 1, registers: int = 1000, host: str = "127.0.0.1",
                 base_port: int = 0, update_interval_s: float | None = None,
                 profile: Profile = Profile.COUNTER) -> None:
        if devices < 1:
            raise ValueError("devices must be >= 1")
        if profile is Profile.DEMO:
            registers = max(registers, _DEMO_MIN_REGISTERS)
        if not 1 <= registers <= 65536:
            raise ValueError("registers must be within 1..65536")
        self.host = host
        self.registers = registers
        self.profile = profile
        self.update_interval_s = update_interval_s
        self._base_port = base_port
        self._servers: list[ModbusTcpServer | None] = [None] * devices
        self._memory: list[_Memory | None] = [None] * devices
        self.ports: list[int] = [0] * devices
        self._updater: asyncio.Task[None] | None = None
        self._tick = 0
        self._energy_wh = [0.0] * devices
        self._t0 = time.monotonic()
        self._last = self._t0

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            for index in range(len(self._servers)):
                await self.start(index)
            self.update()
            if self.update_interval_s is not None:
                self._updater = asyncio.create_task(self._update_loop(self.update_interval_s),
                                                    name="simulator-update")
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the update task and every server."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
            self._updater = None
        for index in range(len(self._servers)):
            await self.stop(index)

    async def start(self, index: int) -> None:
        """Start (or restart, on the same port and with the same values) device ``index``."""
        if self._servers[index] is not None:
            return
        port = self.ports[index] or (self._base_port + index if self._base_port else 0)
        server = ModbusTcpServer(self._device(), address=(self.host, port))
        runtime = server.context.devices[UNIT_ID]  # type: ignore[union-attr]
        memory = self._memory[index]
        if memory is None:
            self._memory[index] = _Memory(runtime.block)
        else:
            runtime.block = memory.blocks  # a restart keeps the values
        await server.serve_forever(background=True)
        sockets = server.transport.sockets  # type: ignore[attr-defined]
        self.ports[index] = sockets[0].getsockname()[1]
        self._servers[index] = server

    async def stop(self, index: int) -> None:
        """Stop device ``index``: its port refuses connections and open ones are closed."""
        server, self._servers[index] = self._servers[index], None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _device(self) -> SimDevice:
        n = self.registers
        return SimDevice(
            id=UNIT_ID,
            simdata=(
                [SimData(0, count=n, values=False, datatype=DataType.BITS)],
                [SimData(0, count=n, values=False, datatype=DataType.BITS)],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
            ),
        )

    # -- values --------------------------------------------------------------------------

    def _table(self, index: int, table: Table) -> list[int]:
        memory = self._memory[index]
        if memory is None:
            raise RuntimeError("the site is not started")
        return memory.registers(table)

    def set_registers(self, index: int, address: int, values: Sequence[int], *,
                      table: Table = Table.HOLDING) -> None:
        """Set registers ``address..`` of device ``index`` (16-bit words, 0..65535)."""
        if table not in (Table.HOLDING, Table.INPUT):
            raise ValueError(f"{table.value} holds bits: use set_bits")
        if address < 0 or address + len(values) > self.registers:
            raise IndexError(f"registers {address}..{address + len(values) - 1} are outside "
                             f"0..{self.registers - 1}")
        if any(not 0 <= v <= 0xFFFF for v in values):
            raise ValueError("register values must be within 0..65535")
        self._table(index, table)[address:address + len(values)] = values

    def set_bits(self, index: int, address: int, values: Sequence[bool], *,
                 table: Table = Table.COIL) -> None:
        """Set coils (or discrete inputs) ``address..`` of device ``index``."""
        if table not in (Table.COIL, Table.DISCRETE):
            raise ValueError(f"{table.value} holds registers: use set_registers")
        if address < 0 or address + len(values) > self.registers:
            raise IndexError(f"bits {address}..{address + len(values) - 1} are outside "
                             f"0..{self.registers - 1}")
        words = self._table(index, table)  # 16 bits per word, bit 0 first
        for i, value in enumerate(values, start=address):
            if value:
                words[i >> 4] |= 1 << (i & 15)
            else:
                words[i >> 4] &= ~(1 << (i & 15))

    def set_coils(self, index: int, address: int, values: Sequence[bool]) -> None:
        """Set coils ``address..`` of device ``index``."""
        self.set_bits(index, address, values, table=Table.COIL)

    def update(self) -> None:
        """Advance the profile by one step (the background task calls this)."""
        now = time.monotonic()
        elapsed, dt = now - self._t0, now - self._last
        self._last = now
        for index in range(len(self._servers)):
            if self._memory[index] is None:
                continue
            if self.profile is Profile.DEMO:
                self._update_demo(index, elapsed, dt)
            else:
                self._update_counter(index)
        self._tick += 1

    def _update_counter(self, index: int) -> None:
        n = self.registers
        first = (self._tick + index) & 0xFFFF
        if first + n <= 0x10000:
            words = list(range(first, first + n))
        else:
            words = [*range(first, 0x10000), *range(0, first + n - 0x10000)]
        self._table(index, Table.HOLDING)[:n] = words
        self._table(index, Table.INPUT)[:n] = words
        # bit i = (tick + i) % 2: bit 0 set on odd ticks
        pattern = 0x5555 if self._tick & 1 else 0xAAAA
        nwords = (n + 15) >> 4
        self._table(index, Table.COIL)[:nwords] = [pattern] * nwords
        self._table(index, Table.DISCRETE)[:nwords] = [pattern] * nwords

    def _update_demo(self, index: int, elapsed: float, dt: float) -> None:
        t = elapsed + 97.0 * index
        gauss = random.gauss
        volts = [230.0 + 2.5 * math.sin(t / 47 + k * 2.1) + gauss(0, 0.2) for k in range(3)]
        amps = [15.0 + 6.0 * math.sin(t / 120 + k * 1.3) + gauss(0, 0.1) for k in range(3)]
        pf = 0.945 + 0.04 * math.sin(t / 300)
        power = sum(v * a for v, a in zip(volts, amps, strict=True)) * pf
        self._energy_wh[index] += power * dt / 3600.0
        pm25 = max(0.5, 14.0 + 9.0 * math.sin(t / 600) + gauss(0, 0.8))
        temperature = 19.0 + 6.0 * math.sin(t / 900) + gauss(0, 0.05)
        floats = (
            *volts, *amps, pf, power, 50.0 + 0.04 * math.sin(t / 20),
            self._energy_wh[index] / 1000.0,
            pm25, pm25 * 1.6 + 4.0 + gauss(0, 1.0), temperature,
            60.0 - 1.5 * (temperature - 19.0) + gauss(0, 0.3),
            600.0 + 250.0 * math.sin(t / 1200) + gauss(0, 5.0),
        )
        holding = self._table(index, Table.HOLDING)
        holding[0:2 * len(DEMO_POINTS)] = _DEMO_WORDS.unpack(_DEMO_FLOATS.pack(*floats))
        energy_wh = int(self._energy_wh[index]) & 0xFFFFFFFF
        holding[100:102] = [energy_wh & 0xFFFF, energy_wh >> 16]  # CDAB: low word first
        holding[102] = round(temperature * 10) & 0xFFFF
        self._table(index, Table.INPUT)[0] = self._tick & 0xFFFF
        coils = self._table(index, Table.COIL)
        coils[0] = (coils[0] & ~1) | (1 if math.sin(t / 400) > -0.8 else 0)

    async def _update_loop(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval_s
            delay = next_at - loop.time()
            if delay < 0:  # overrun: skip the missed ticks rather than burst
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)
            self.update()


class BusTransport(StrEnum):
    """How a :class:`SimulatedBus` is reached."""

    SERIAL = "serial"
    """RTU on a pseudo-terminal pair made by socat: the agent opens :attr:`SimulatedBus.port`."""
    TCP = "tcp"
    """RTU frames over TCP on 127.0.0.1 (a serial device server): :attr:`SimulatedBus.tcp_port`."""


class Corruption(StrEnum):
    """What :meth:`SimulatedBus.corrupt` does to a response on the line."""

    CRC = "crc"
    """The response with its CRC broken."""
    NOISE = "noise"
    """Random bytes instead of the response."""
    PREFIX = "prefix"
    """Random bytes, then the valid response."""


_SOCAT = "socat"
_WRITE_TABLE = {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING}


class SimulatedBus:
    """Modbus RTU slaves sharing one line, for tests and benchmarks::

        async with SimulatedBus(units=(1, 2, 3), tmp_dir=tmp_path) as bus:
            bus.set_registers(2, 0, [1, 2])      # holding 0..1 of unit 2
            bus.mute(3)                          # unit 3 stops answering
            config = ModbusRtuConnection(port=bus.port, unit_id=2)

    With ``transport=SERIAL`` a ``socat`` process links two pseudo-terminals; a pymodbus
    serial server holds one end and the agent opens :attr:`port` (a symlink to the other;
    a pty does not enforce the baud rate). With ``TCP`` a pymodbus TCP server with the RTU
    framer listens on :attr:`tcp_port`. Every unit has ``registers`` of each table from 0.

    :attr:`requests` counts the requests each unit received (answered or not), which lets a
    test assert on poll counts rather than on timings; :attr:`functions` lists the function
    codes executed.
    """

    def __init__(self, *, units: Sequence[int] = (1,), registers: int = 200,
                 transport: BusTransport = BusTransport.SERIAL, tmp_dir: str | None = None,
                 host: str = "127.0.0.1", seed: int = 0) -> None:
        if not units:
            raise ValueError("a bus needs at least one unit")
        self.units = tuple(units)
        self.registers = registers
        self.transport = transport
        self.host = host
        self._tmp_dir = tmp_dir
        self._owned_dir: str | None = None
        self.port = ""
        self.tcp_port = 0
        self._server: ModbusSerialServer | ModbusTcpServer | None = None
        self._socat: asyncio.subprocess.Process | None = None
        self._memory: dict[int, _Memory] = {}
        self._muted: set[int] = set()
        self._exceptions: dict[int, int] = {}
        self._ignored: set[tuple[int, Table | None, int]] = set()
        """(unit, table, address) whose writes are acknowledged but not kept."""
        self._corrupt: list[tuple[int, Corruption]] = []
        self._random = random.Random(seed)
        self.requests: dict[int, int] = dict.fromkeys(self.units, 0)
        self.functions: list[tuple[int, int]] = []
        """(unit, function code) of every request the units executed, oldest first."""

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
        if self._owned_dir is not None:
            import shutil

            shutil.rmtree(self._owned_dir, ignore_errors=True)

    async def start(self) -> None:
        """Start (or restart after :meth:`stop`, with the same port and values)."""
        if self._server is not None:
            return
        devices = [self._device(unit) for unit in self.units]
        if self.transport is BusTransport.SERIAL:
            server_end = await self._start_socat()
            server: ModbusSerialServer | ModbusTcpServer = ModbusSerialServer(
                devices, port=server_end, framer=FramerType.RTU, baudrate=115200,
                ignore_missing_devices=True, trace_packet=self._trace,
                trace_pdu=self._trace_pdu)
        else:
            server = ModbusTcpServer(devices, framer=FramerType.RTU,
                                     address=(self.host, self.tcp_port),
                                     ignore_missing_devices=True, trace_packet=self._trace,
                                     trace_pdu=self._trace_pdu)
        runtimes = server.context.devices  # type: ignore[union-attr]
        for unit in self.units:
            if unit in self._memory:
                runtimes[unit].block = self._memory[unit].blocks  # a restart keeps values
            else:
                self._memory[unit] = _Memory(runtimes[unit].block)
        await server.serve_forever(background=True)
        if self.transport is BusTransport.TCP:
            self.tcp_port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop(self) -> None:
        """Stop the server and, on a serial bus, the pty pair: the port vanishes."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        socat, self._socat = self._socat, None
        if socat is not None and socat.returncode is None:
            socat.terminate()
            await socat.wait()

    async def _start_socat(self) -> str:
        import os
        import tempfile

        if not self.port:
            folder = self._tmp_dir
            if folder is None:
                folder = self._owned_dir = tempfile.mkdtemp(prefix="simbus-")
            self.port = os.path.join(folder, f"bus-{id(self):x}")
        server_end = self.port + ".server"
        self._socat = await asyncio.create_subprocess_exec(
            _SOCAT, "-d", "-d", f"pty,raw,echo=0,link={self.port}",
            f"pty,raw,echo=0,link={server_end}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        assert self._socat.stderr is not None
        while True:  # socat says when both ends exist
            line = await self._socat.stderr.readline()
            if not line:
                raise RuntimeError("socat exited before linking the pseudo-terminals")
            if b"starting data transfer loop" in line:
                break
        return server_end

    def _device(self, unit: int) -> SimDevice:
        n = self.registers

        async def action(func_code: int, start_address: int, address: int, count: int,
                         registers: list[int], values: list[int] | list[bool] | None
                         ) -> ExcCodes | None:
            code = self._exceptions.get(unit)
            if code is not None:
                return ExcCodes(code)
            if values and self._ignored:
                # pymodbus stores ``values`` once this returns: keep the old contents.
                table = _WRITE_TABLE.get(func_code)
                stored = cast(list[int | bool], values)
                for i in range(len(stored)):
                    at = address + i
                    if (unit, table, at) not in self._ignored:
                        continue
                    if table is Table.COIL:
                        stored[i] = bool(registers[(at >> 4) - start_address] >> (at & 15) & 1)
                    else:
                        stored[i] = registers[at - start_address]
            return None

        return SimDevice(
            id=unit,
            action=action,
            simdata=(
                [SimData(0, count=n, values=False, datatype=DataType.BITS)],
                [SimData(0, count=n, values=False, datatype=DataType.BITS)],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
            ),
        )

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and pdu.dev_id in self.requests:
            self.functions.append((pdu.dev_id, pdu.function_code))
        return pdu

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """Every frame the server sends passes here: count, mute, corrupt."""
        if not sending or not data:
            return data
        unit = data[0]
        if unit in self.requests:
            self.requests[unit] += 1
        if unit in self._muted:
            return b""
        if self._corrupt and self._corrupt[0][0] == unit:
            _, how = self._corrupt.pop(0)
            noise = self._random.randbytes(len(data))
            if how is Corruption.CRC:
                return data[:-1] + bytes([data[-1] ^ 0xFF])
            if how is Corruption.NOISE:
                return noise
            return noise[:5] + data
        return data

    # -- faults ---------------------------------------------------------------------------

    def mute(self, unit: int) -> None:
        """Unit ``unit`` receives requests but never answers (a dead slave)."""
        self._muted.add(unit)

    def unmute(self, unit: int) -> None:
        """Unit ``unit`` answers again."""
        self._muted.discard(unit)

    def fail_with(self, unit: int, code: int | None) -> None:
        """Answer every request to ``unit`` with exception ``code`` (``None``: normally)."""
        if code is None:
            self._exceptions.pop(unit, None)
        else:
            self._exceptions[unit] = code

    def ignore_writes(self, unit: int, address: int, count: int = 1, *,
                      table: Table = Table.HOLDING) -> None:
        """Holding registers (or coils) ``address..`` of ``unit`` acknowledge writes but
        keep their value, like a read-only register that does not say so."""
        if table not in (Table.HOLDING, Table.COIL):
            raise ValueError(f"{table.value} cannot be written")
        self._ignored.update((unit, table, a) for a in range(address, address + count))

    def corrupt(self, unit: int, how: Corruption, *, times: int = 1) -> None:
        """Corrupt the next ``times`` responses of ``unit`` on the line."""
        self._corrupt.extend([(unit, how)] * times)

    def set_invalid(self, unit: int, address: int, count: int = 1, *,
                    table: Table = Table.HOLDING) -> None:
        """Registers ``address..`` of ``unit`` do not exist: reading them gives exception 2."""
        flags = self._memory[unit].blocks[_BLOCK_KEY[table]][3]
        for i in range(address, address + count):
            flags[i] = (flags[i] & ~0xF) | DataType.INVALID

    # -- values ---------------------------------------------------------------------------

    def table(self, unit: int, table: Table = Table.HOLDING) -> list[int]:
        """The live words of one table of ``unit`` (bits are packed 16 per word)."""
        return self._memory[unit].registers(table)

    def set_registers(self, unit: int, address: int, values: Sequence[int], *,
                      table: Table = Table.HOLDING) -> None:
        """Set registers ``address..`` of ``unit`` (16-bit words, 0..65535)."""
        if address < 0 or address + len(values) > self.registers:
            raise IndexError(f"registers {address}.. are outside 0..{self.registers - 1}")
        self.table(unit, table)[address:address + len(values)] = values

    def set_bits(self, unit: int, address: int, values: Sequence[bool], *,
                 table: Table = Table.COIL) -> None:
        """Set coils (or discrete inputs) ``address..`` of ``unit``."""
        words = self.table(unit, table)
        for i, value in enumerate(values, start=address):
            if value:
                words[i >> 4] |= 1 << (i & 15)
            else:
                words[i >> 4] &= ~(1 << (i & 15))

    def bit(self, unit: int, address: int, *, table: Table = Table.COIL) -> bool:
        """One coil (or discrete input) of ``unit``."""
        return bool(self.table(unit, table)[address >> 4] >> (address & 15) & 1)


async def _run(args: argparse.Namespace) -> None:
    site = SimulatedSite(devices=args.devices, registers=args.registers, host=args.host,
                         base_port=args.base_port, update_interval_s=args.update_interval_s,
                         profile=Profile(args.profile))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with site:
        print(f"listening on {args.host} ports {','.join(map(str, site.ports))} "
              f"(unit id {UNIT_ID}, {site.registers} registers, profile {args.profile})",
              flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; runs until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.devtools.simulator",
                                     description="Simulated Modbus TCP devices on loopback.")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--registers", type=int, default=1000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=15020,
                        help="device d listens on base-port + d (0: any free ports)")
    parser.add_argument("--profile", choices=[p.value for p in Profile],
                        default=Profile.COUNTER.value)
    parser.add_argument("--update-interval-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
