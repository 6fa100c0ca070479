"""End-to-end benchmark: Modbus TCP simulator -> agent -> Mosquitto (mutual TLS) -> counter.

Everything on 127.0.0.1. The simulator, the broker and the agent each run in their own
process; the counting subscriber runs in this one. Figures are taken from the agent's
/proc entries over a measurement window after a warm-up, and the sequence numbers seen by
the subscriber are reconciled against the agent's buffer at the end.

    python bench/e2e.py [--devices 10] [--registers 1000] [--interval 0.05] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import make_pki
from edge_agent.devtools.watch import Received, Watcher
from edge_agent.telemetry.contract import batches_of

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Counter:
    """Counts readings and sequence numbers of telemetry messages (network thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readings = 0
        self.messages = 0
        self.seqs: set[int] = set()
        self.duplicates = 0

    def __call__(self, message: Received) -> None:
        if not message.topic.endswith("/telemetry"):
            return
        doc = orjson.loads(message.payload)
        with self.lock:
            self.messages += 1
            for batch in batches_of(doc):
                if batch["seq"] in self.seqs:
                    self.duplicates += 1
                    continue
                self.seqs.add(batch["seq"])
                self.readings += sum(len(s["values"]) for s in batch["samples"])

    def snapshot(self) -> int:
        with self.lock:
            return self.readings


def rss_now(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmRSS:"))


def proc_figures(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user+system, all threads), peak RSS bytes, bytes written to storage."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines()
               if line.startswith("VmHWM:"))
    io = Path(f"/proc/{pid}/io").read_text()
    written = next(int(line.split()[1]) for line in io.splitlines()
                   if line.startswith("write_bytes:"))
    return cpu, hwm, written


def config_text(*, ports: list[int], registers: int, interval: float, broker_port: int,
                pki: Path, buffer: Path, commit_interval: float = 0.25) -> str:
    devices = "\n".join(f"""\
  - name: dev-{i}
    driver: modbus_tcp
    connection: {{host: 127.0.0.1, port: {port}, timeout_s: 2.0}}
    interval_s: {interval}
    points:
      - {{name: hr, table: holding, address: 0, type: uint16, repeat: {registers}}}"""
                        for i, port in enumerate(ports))
    return f"""\
gateway: {{id: gw-bench, site: lab}}
log_level: WARNING
uplink:
  host: 127.0.0.1
  port: {broker_port}
  topic_prefix: bench
  tls:
    ca_file: {pki / 'ca.pem'}
    cert_file: {pki / 'client.pem'}
    key_file: {pki / 'client.key'}
buffer:
  path: {buffer}
  commit_interval_s: {commit_interval}
  max_message_readings: 1000
devices:
{devices}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.05,
                        help="poll interval of every device (s); offered load is "
                        "devices*registers/interval readings/s")
    parser.add_argument("--commit-interval", type=float, default=0.25,
                        help="buffer.commit_interval_s of the agent")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    pki = work / "pki"
    make_pki(pki)
    (work / "broker").mkdir()
    base_port = 20000 + os.getpid() % 20000
    sim = subprocess.Popen(  # cwd: the checkout must not shadow the installed package
        [sys.executable, "-m", "edge_agent.devtools.simulator", "--devices", str(args.devices),
         "--registers", str(args.registers), "--base-port", str(base_port),
         "--update-interval-s", "0.5"],
        stdout=subprocess.PIPE, text=True, cwd=work)
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"simulator did not start: {line!r}")
        ports = [base_port + i for i in range(args.devices)]
        with MosquittoBroker(work / "broker", ca_file=pki / "ca.pem",
                             cert_file=pki / "server.pem", key_file=pki / "server.key") as broker:
            counter = Counter()
            config = work / "agent.yaml"
            config.write_text(config_text(ports=ports, registers=args.registers,
                                          interval=args.interval, broker_port=broker.tls_port,
                                          pki=pki, buffer=work / "buffer.db",
                                          commit_interval=args.commit_interval))
            with Watcher(host="127.0.0.1", port=broker.tls_port, topic="bench/#",
                         ca_file=pki / "ca.pem", cert_file=pki / "client.pem",
                         key_file=pki / "client.key", on_message=counter, keep=False):
                agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", str(config)],
                                         cwd=work)  # not the checkout: it would shadow
                time.sleep(args.warmup)  # benchmark warm-up, not synchronisation
                cpu0, hwm0, written0 = proc_figures(agent.pid)
                rss0 = rss_now(agent.pid)
                got0, t0 = counter.snapshot(), time.monotonic()
                time.sleep(args.seconds)
                cpu1, hwm, written1 = proc_figures(agent.pid)
                rss1 = rss_now(agent.pid)
                got1, t1 = counter.snapshot(), time.monotonic()
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=60)
                # Let the last acknowledged messages reach the subscriber.
                deadline = time.monotonic() + 10
                db = sqlite3.connect(work / "buffer.db")
                last_seq = db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name='batch'").fetchone()[0]
                buffered = {r[0] for r in db.execute("SELECT seq FROM batch")}
                buffered_readings = db.execute(
                    "SELECT coalesce(sum(readings),0) FROM batch").fetchone()[0]
                db.close()
                while time.monotonic() < deadline:
                    with counter.lock:
                        if len(counter.seqs | buffered) >= last_seq:
                            break
                    time.sleep(0.1)
            with counter.lock:
                missing = set(range(1, last_seq + 1)) - counter.seqs - buffered
                delivered = got1 - got0
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)

    elapsed = t1 - t0
    offered = args.devices * args.registers / args.interval
    print(f"edge-agent end-to-end benchmark ({args.devices} devices x {args.registers} "
          f"registers every {args.interval} s = {offered:,.0f} readings/s offered; "
          f"{args.seconds:.0f} s window after {args.warmup:.0f} s warm-up)")
    print(f"  delivered             {delivered / elapsed:12,.0f} readings/s")
    if delivered:
        print(f"  agent CPU             {(cpu1 - cpu0) / delivered * 1e6:12.2f} CPU-s per million "
              "readings")
        print(f"  disk written          {(written1 - written0) / delivered:12.1f} bytes per "
              "reading")
    print(f"  agent peak RSS        {hwm / 1e6:12.1f} MB (after warm-up {hwm0 / 1e6:.1f}; "
          f"RSS at window start {rss0 / 1e6:.1f}, end {rss1 / 1e6:.1f})")
    print(f"  messages              {counter.messages:12,d} delivered carrying "
          f"{len(counter.seqs):,d} batches, {counter.duplicates} duplicate batches, "
          f"{len(buffered)} still buffered ({buffered_readings} readings)")
    print(f"  lost (by sequence)    {len(missing):12,d} batches missing of {last_seq}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
