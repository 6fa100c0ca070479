"""A simulated field site: Modbus TCP devices on the loopback, for the demo, tests and benchmark.

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
from typing import Self

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.drivers.modbus.config import Table

__all__ = ["DEMO_POINTS", "Profile", "SimulatedSite", "main"]

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
