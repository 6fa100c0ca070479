"""The quick-start demo: simulated field devices -> agent -> local Mosquitto over mutual
TLS, with the telemetry printed as the platform receives it.

Everything lives in one working folder (default ``.quickstart/``): a throwaway certificate
authority, the broker's configuration and log, the agent's configuration and its buffer.
The buffer is kept between runs, so stopping and restarting the demo shows the sequence
numbers continuing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import orjson

from edge_agent.agent import run
from edge_agent.config import load_config
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import make_pki
from edge_agent.devtools.simulator import DEMO_POINTS, Profile, SimulatedSite
from edge_agent.devtools.watch import Received, Watcher
from edge_agent.telemetry.contract import batches_of

__all__ = ["demo_config", "run_demo"]

DEVICES = ("meter-hall", "meter-library")


def demo_config(*, ports: list[int], broker_port: int, pki_dir: Path, buffer: Path) -> str:
    """The agent configuration of the demo (YAML text)."""
    points = "\n".join(
        f"      - {{name: {name}, table: holding, address: {address}, type: float32"
        + (f", unit: '{unit}'" if unit else "") + "}"
        for name, address, unit in DEMO_POINTS)
    devices = "\n".join(f"""\
  - name: {name}
    driver: modbus_tcp
    connection: {{host: 127.0.0.1, port: {port}, unit_id: 1, timeout_s: 1.0}}
    interval_s: 1.0
    points:
{points}
      - {{name: energy_import_wh, table: holding, address: 100, type: uint32, order: CDAB,
          unit: Wh}}
      - {{name: temperature_x10, table: holding, address: 102, type: int16, scale: 0.1, unit: degC}}
      - {{name: updates, table: input, address: 0, type: uint16}}
      - {{name: relay_on, table: coil, address: 0, type: bool}}""" for name, port in zip(
        DEVICES, ports, strict=True))
    return f"""\
# Written by `edge-agent demo`; regenerated at every start.
gateway: {{id: gw-demo, site: quickstart}}
uplink:
  host: 127.0.0.1
  port: {broker_port}
  topic_prefix: city
  tls:
    ca_file: {pki_dir / "ca.pem"}
    cert_file: {pki_dir / "client.pem"}
    key_file: {pki_dir / "client.key"}
buffer:
  path: {buffer}
  commit_interval_s: 0.25
devices:
{devices}
"""


def show(message: Received) -> None:
    """Print a message the way the platform sees it: one line per sample or event."""
    try:
        doc = orjson.loads(message.payload)
    except orjson.JSONDecodeError:
        print(f"{message.topic}: {message.payload[:80]!r}", flush=True)
        return
    if message.topic.endswith("/status"):
        print(f"\n[{message.topic}] gateway {doc.get('gateway')} is {doc.get('state')}"
              + (f" ({doc['reason']})" if doc.get("reason") else "")
              + (" [retained]" if message.retain else ""), flush=True)
        return
    batches = batches_of(doc)
    span = f"seq={doc['seq']}" + (f"..{doc['seq_last']}" if "seq_last" in doc else "")
    lines = [f"\n[{message.topic}] {span} gateway={doc['gateway']}"
             + (" (historical)" if doc.get("historical") else "")]
    for batch in batches:
        for sample in batch.get("samples", []):
            values = sample["values"]
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(values.items())[:6])
            lines.append(f"  {sample['ts']} {sample['device']:<14} {sample['quality']:<4} "
                         f"{shown}, ... ({len(values)} readings)"
                         + (f" reason: {sample['reason']}" if "reason" in sample else ""))
        for event in batch.get("events", []):
            lines.append(f"  {event['ts']} {event['device']:<14} is {event['state']}"
                         + (f": {event['detail']}" if event.get("detail") else ""))
    print("\n".join(lines), flush=True)


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def run_demo(directory: Path, *, seconds: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for ``seconds``); returns the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    directory = directory.resolve()
    try:
        return asyncio.run(_demo(directory, seconds))
    except KeyboardInterrupt:
        return 0


async def _demo(directory: Path, seconds: float | None) -> int:
    pki_dir = directory / "pki"
    if not (pki_dir / "ca.pem").is_file():
        make_pki(pki_dir)
    broker = MosquittoBroker(directory / "broker", ca_file=pki_dir / "ca.pem",
                             cert_file=pki_dir / "server.pem", key_file=pki_dir / "server.key")
    (directory / "broker").mkdir(parents=True, exist_ok=True)
    async with broker, SimulatedSite(devices=len(DEVICES), profile=Profile.DEMO,
                                     update_interval_s=0.5) as site:
        config_path = directory / "agent.yaml"
        config_path.write_text(demo_config(ports=site.ports, broker_port=broker.tls_port,
                                           pki_dir=pki_dir, buffer=directory / "buffer.db"))
        config = load_config(config_path)
        print(f"demo: broker on 127.0.0.1:{broker.tls_port} (mutual TLS), simulated devices "
              f"on ports {site.ports}, config {config_path}", flush=True)
        print("demo: showing topic city/# as the platform receives it; Ctrl-C stops",
              flush=True)
        with Watcher(host="127.0.0.1", port=broker.tls_port, topic="city/#",
                     ca_file=pki_dir / "ca.pem", cert_file=pki_dir / "client.pem",
                     key_file=pki_dir / "client.key", on_message=show, keep=False):
            stop = asyncio.Event()
            if seconds is not None:
                asyncio.get_running_loop().call_later(seconds, stop.set)
            with contextlib.suppress(asyncio.CancelledError):
                await run(config, stop=stop)
    return 0
