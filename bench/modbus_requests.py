"""Modbus benchmark: requests per scan against the theoretical minimum, and poll jitter and
bus utilisation of an RS-485 bus of simulated RTU slaves (one of them dead).

    python bench/modbus_requests.py [--seconds 10] [--units 4] [--interval 0.5]

Part 1 plans the example maps in deploy/examples (no I/O) and prints, per device, the read
requests of one scan with one request per point, merged with max_gap 0, merged as
configured, and the theoretical minimum (each table's span divided by the protocol limit).

Part 2 polls ``--units`` healthy units and one that never answers on one serial bus (a
socat pseudo-terminal pair with a pymodbus serial server; a pty does not enforce the baud
rate, so the line figures are computed at the configured 9600 baud 8N1), through the real
scheduler, and prints per-device poll jitter (start delay behind the planned tick, p50/p99)
and the bus figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.config.model import DeviceConfig
from edge_agent.devtools.simulator import SimulatedBus
from edge_agent.drivers.base import Quality, Sample
from edge_agent.drivers.modbus.config import (
    DataType,
    ModbusPoint,
    ModbusRtuConnection,
    Parity,
    Table,
)
from edge_agent.drivers.modbus.driver import ModbusDriver
from edge_agent.drivers.modbus.plan import minimum_requests, plan_reads
from edge_agent.scheduler.poller import DevicePoller, jitter_figures, poll_groups
from edge_agent.telemetry.contract import DeviceEvent

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "examples"


def requests_per_scan() -> None:
    print("requests per scan (all poll groups of a device once)")
    print(f"  {'device':28} {'points':>6} {'per point':>9} {'gap 0':>6} {'as configured':>13}"
          f" {'minimum':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "certs").mkdir()
        for name in ("platform-ca.pem", "gw.pem", "gw.key"):
            (Path(tmp) / "certs" / name).write_text("stub")
        for example in sorted(EXAMPLES.glob("*.yaml")):
            config = parse_config(example.read_text(), source=example.name,
                                  base_dir=Path(tmp))
            for device in config.devices:
                points: dict[str, ModbusPoint] = {p.name: p for p in device.points}
                merged = gap0 = minimum = 0
                for group in poll_groups(device):
                    pts = [points[n] for n in group.names]
                    gap0 += len(plan_reads(pts).blocks)
                    merged += len(plan_reads(pts, max_gap=device.connection.max_gap).blocks)
                    minimum += minimum_requests(pts)
                print(f"  {device.name:28} {len(points):6d} {len(points):9d} {gap0:6d} "
                      f"{merged:13d} {minimum:7d}")


async def bus_figures(*, seconds: float, units: int, interval_s: float) -> None:
    healthy = tuple(range(1, units + 1))
    dead = units + 1
    with tempfile.TemporaryDirectory() as tmp:
        async with SimulatedBus(units=(*healthy, dead), tmp_dir=tmp) as bus:
            bus.mute(dead)
            for unit in healthy:
                bus.set_registers(unit, 0, list(range(unit, unit + 40)))
            good: dict[str, int] = {}

            async def sink(item: Sample | DeviceEvent) -> None:
                if isinstance(item, Sample) and item.quality is Quality.GOOD:
                    good[item.device] = good.get(item.device, 0) + 1

            pollers = []
            drivers = []
            for unit in (*healthy, dead):
                points = tuple(ModbusPoint(name=f"r{i}", interval_s=interval_s,
                                           table=Table.HOLDING, address=i,
                                           type=DataType.UINT16)
                               for i in range(20))
                device = DeviceConfig(
                    name=f"unit-{unit}{'-dead' if unit == dead else ''}", driver="modbus_rtu",
                    connection=ModbusRtuConnection(port=bus.port, unit_id=unit, baudrate=9600,
                                                   parity=Parity.NONE, timeout_s=0.2),
                    points=points, reconnect_initial_s=0.5, reconnect_max_s=5.0)
                driver = ModbusDriver(device)
                drivers.append(driver)
                pollers.append(DevicePoller(device, driver, sink))
            started = time.monotonic()
            tasks = [asyncio.create_task(p.run(), name=p.device.name) for p in pollers]
            await asyncio.sleep(seconds)  # the measurement window, not synchronisation
            stats = drivers[0].bus_stats
            now = time.monotonic()
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if not isinstance(result, asyncio.CancelledError):
                    print(f"poller ended: {result!r}", file=sys.stderr)
    elapsed = now - started
    print(f"\nRTU bus: {units} healthy units + 1 dead, 20 registers each every {interval_s} s, "
          f"timeout 0.2 s, {elapsed:.1f} s, line 9600 8N1 (pty: baud not enforced)")
    print(f"  {'device':14} {'good polls':>10} {'polls/s':>8} {'jitter p50':>11} "
          f"{'p99':>9} {'skipped':>8}")
    for poller in pollers:
        p50, p99 = jitter_figures(poller.stats.late_s)
        print(f"  {poller.device.name:14} {good.get(poller.device.name, 0):10d} "
              f"{good.get(poller.device.name, 0) / elapsed:8.2f} {p50 * 1e3:9.2f}ms "
              f"{p99 * 1e3:7.2f}ms {poller.stats.skipped_ticks:8d}")
    if stats is not None:
        w50, w99 = stats.wait_figures()
        print(f"  bus requests {stats.requests}, answers {stats.answers}, timeouts "
              f"{stats.timeouts} (dead unit attempts {bus.requests[dead]}), "
              f"transport failures {stats.transport_failures}")
        print(f"  bus utilisation measured {stats.utilisation(now):.1%} (timeouts hold the "
              f"bus), line time at 9600 baud {stats.line_utilisation(now):.1%}; wait for the "
              f"bus p50 {w50 * 1e3:.2f} ms p99 {w99 * 1e3:.2f} ms")
        theory = 1 / ((8 + 45) * 10 / 9600 + 2 * 3.5 * 10 / 9600)
        print(f"  theory: a 20-register read takes {1e3 / theory:.1f} ms on a 9600 8N1 line "
              f"({theory:.1f} requests/s max)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    requests_per_scan()
    asyncio.run(bus_figures(seconds=args.seconds, units=args.units, interval_s=args.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
