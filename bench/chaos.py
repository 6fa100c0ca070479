"""Chaos bench (issue #4): the long run of tests/test_chaos.py, with figures.

Everything on 127.0.0.1: a simulator process, Mosquitto with mutual TLS, the agent as a
subprocess, and a subscriber in this process that reconciles sequence numbers against the
buffer file. Three phases, each with its own buffer file:

1. kills: SIGKILL the agent at random moments ``--kills`` times under load, restarting it
   each time, then drain; prints lost and duplicated messages.
2. outage: stop the broker for ``--outage`` seconds under load, bring it back; prints the
   drain rate of the backlog and the agent's RSS before, during and after.
3. backlog: with the broker down, let ``--backlog`` readings accumulate, then bring the
   broker back; prints bytes written per accepted reading (/proc/<pid>/io), the peak RSS
   during the backlog, and the drain rate.

    python bench/chaos.py                                  # 100 kills, 600 s, 10 M readings
    python bench/chaos.py --kills 10 --outage 10 --backlog 200000   # a quick run

Every wait is bounded (``--max-wait``); a phase is skipped with ``--kills 0``,
``--outage 0`` or ``--backlog 0``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.chaos import (
    TELEMETRY_TOPIC,
    AgentProcess,
    BufferView,
    SeqLedger,
    chaos_config,
    duplicates_per_epoch,
    quiesce_and_stop_broker,
    read_buffer,
    reconcile,
)
from edge_agent.devtools.pki import Pki, make_pki
from edge_agent.devtools.watch import Watcher

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rig:
    """What every phase shares: certificates, broker, simulated devices, limits."""

    work: Path
    pki: Pki
    broker: MosquittoBroker
    ports: list[int]
    args: argparse.Namespace


class Phase:
    """One buffer file, one agent, one ledger (and its subscriber, renewed on demand)."""

    def __init__(self, rig: Rig, name: str, **settings: object) -> None:
        self.rig = rig
        self.dir = rig.work / name
        self.dir.mkdir()
        self.db = self.dir / "buffer.db"
        config = self.dir / "agent.yaml"
        config.write_text(chaos_config(pki=rig.pki, broker_port=rig.broker.tls_port,
                                       ports=rig.ports, buffer=self.db,
                                       **settings))  # type: ignore[arg-type]
        self.agent = AgentProcess(config, log_file=self.dir / "agent.log")
        self.ledger = SeqLedger(TELEMETRY_TOPIC)
        self.watcher: Watcher | None = None
        self.subscribe()

    def subscribe(self) -> None:
        pki = self.rig.pki
        self.watcher = Watcher(host=self.rig.broker.host, port=self.rig.broker.tls_port,
                               topic=TELEMETRY_TOPIC, ca_file=pki.ca_file,
                               cert_file=pki.client_cert, key_file=pki.client_key,
                               on_message=self.ledger, keep=False).start()

    def broker_back(self) -> None:
        """Restart the broker and resubscribe while the agent is frozen, so that nothing
        it sends on reconnecting passes before the subscriber is there."""
        self.agent.freeze()
        try:
            self.rig.broker.start()
            self.subscribe()
        finally:
            self.agent.thaw()

    def wait_commit(self, above: int) -> BufferView:
        return poll(lambda: _above(read_buffer(self.db), above), self.rig.args.max_wait,
                    f"a commit above seq {above}", self.agent)

    def drain_and_stop(self) -> BufferView:
        backlog = self.wait_commit(read_buffer(self.db).last_seq).last_seq
        missing = self.ledger.wait_for(set(range(1, backlog + 1)),
                                       timeout_s=self.rig.args.max_wait)
        if missing:  # reported as lost by the reconciliation
            print(f"  ! {len(missing)} messages not received within {self.rig.args.max_wait} s:"
                  f" {sorted(missing)[:10]}", flush=True)
        self.agent.terminate()
        final = read_buffer(self.db)
        self.ledger.wait_for(set(range(1, final.last_seq + 1)) - final.seqs,
                             timeout_s=self.rig.args.max_wait)
        return final

    def close(self) -> None:
        self.agent.stop_quietly()
        if self.watcher is not None:
            self.watcher.stop()


def _above(view: BufferView, seq: int) -> BufferView | None:
    return view if view.last_seq > seq else None


def poll(probe: Callable[[], T | None], max_wait_s: float, what: str,
            agent: AgentProcess) -> T:
    """Bounded polling of the buffer file: the only view of the agent from outside."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        if not agent.running:
            raise SystemExit(f"the agent exited while waiting for {what}\n{agent.log_tail()}")
        time.sleep(0.05)
    raise SystemExit(f"no {what} within {max_wait_s} s\n{agent.log_tail()}")


def kills(rig: Rig) -> None:
    args = rig.args
    rng = random.Random(args.seed)
    phase = Phase(rig, "kills", interval_s=args.interval, registers=args.registers,
                  max_message_readings=100, max_inflight=args.max_inflight)
    marks: list[int] = []
    started = time.monotonic()
    try:
        for kill in range(args.kills):
            marks.append(len(phase.ledger.arrivals))
            last = read_buffer(phase.db).last_seq
            phase.agent.start()
            if kill % 2 == 0:  # half strike a working data path, half any moment
                phase.wait_commit(last)
            time.sleep(rng.uniform(0.0, 0.5))  # the random moment
            phase.agent.kill()
        marks.append(len(phase.ledger.arrivals))
        phase.agent.start()
        final = phase.drain_and_stop()
    finally:
        phase.close()
    result = reconcile(phase.ledger, final)
    per_restart = duplicates_per_epoch(list(phase.ledger.arrivals), marks)
    print(f"kills: {args.kills} SIGKILLs in {time.monotonic() - started:.0f} s "
          f"(seed {args.seed}, max_inflight {args.max_inflight})")
    print(f"  messages              {result.last_seq:12,d} assigned, {result.received:,d} "
          f"received, {len(result.still_buffered)} still buffered")
    print(f"  lost                  {len(result.lost):12,d}")
    print(f"  duplicated            {result.duplicates:12,d} batches in "
          f"{result.duplicate_messages:,d} messages (max {max(per_restart)} messages after "
          f"one restart; bound kills x max_inflight = {args.kills * args.max_inflight})")
    print(f"  seq reused            {len(result.conflicts):12,d}")


def outage(rig: Rig) -> None:
    args = rig.args
    phase = Phase(rig, "outage", interval_s=args.interval, registers=args.registers,
                  max_message_readings=1000, max_inflight=args.max_inflight,
                  commit_interval_s=0.25)
    try:
        phase.agent.start()
        if not phase.ledger.wait_count(20, timeout_s=args.max_wait):
            raise SystemExit(f"no delivery before the outage\n{phase.agent.log_tail()}")
        rss_before = phase.agent.rss_bytes()
        quiesce_and_stop_broker(phase.agent, phase.db, phase.ledger, rig.broker,
                                timeout_s=args.max_wait)
        outage_end = time.monotonic() + args.outage
        rss_peak = rss_before
        while time.monotonic() < outage_end:  # the outage itself, sampling RSS meanwhile
            time.sleep(min(1.0, max(0.0, outage_end - time.monotonic())))
            rss_peak = max(rss_peak, phase.agent.rss_bytes())
        backlog = read_buffer(phase.db)
        t0 = time.monotonic()
        phase.broker_back()
        missing = phase.ledger.wait_for(set(range(1, backlog.last_seq + 1)),
                                        timeout_s=args.max_wait)
        drain_s = time.monotonic() - t0
        rss_after = phase.agent.rss_bytes()
        final = phase.drain_and_stop()
    finally:
        phase.close()
    result = reconcile(phase.ledger, final)
    print(f"outage: broker down {args.outage:g} s under load")
    print(f"  backlog               {backlog.readings:12,d} readings in "
          f"{len(backlog.seqs):,d} messages")
    print(f"  drained               {backlog.readings / drain_s:12,.0f} readings/s "
          f"({drain_s:.1f} s, live polling going on){' INCOMPLETE' if missing else ''}")
    print(f"  agent RSS             {rss_before / 1e6:12.1f} MB before, peak "
          f"{rss_peak / 1e6:.1f} during, {rss_after / 1e6:.1f} after the drain")
    print(f"  lost                  {len(result.lost):12,d} (duplicated {result.duplicates}, "
          f"seq reused {len(result.conflicts)})")


def backlog(rig: Rig) -> None:
    args = rig.args
    phase = Phase(rig, "backlog", interval_s=args.interval, registers=args.registers,
                  max_message_readings=1000, max_inflight=args.max_inflight,
                  commit_interval_s=0.25)
    rig.broker.stop()
    try:
        phase.agent.start()
        start = phase.wait_commit(0)
        written0 = phase.agent.write_bytes()
        t0 = time.monotonic()
        full = poll(lambda: _at_least(read_buffer(phase.db), args.backlog), args.max_wait,
                    f"a backlog of {args.backlog:,d} readings", phase.agent)
        fill_s = time.monotonic() - t0
        written = phase.agent.write_bytes() - written0
        peak = phase.agent.peak_rss_bytes()
        size = phase.db.stat().st_size
        t1 = time.monotonic()
        phase.broker_back()
        missing = phase.ledger.wait_for(set(range(1, full.last_seq + 1)),
                                        timeout_s=args.max_wait)
        drain_s = time.monotonic() - t1
        final = phase.drain_and_stop()
    finally:
        phase.close()
        if not rig.broker.running:
            rig.broker.start()
    accepted = full.readings - start.readings
    result = reconcile(phase.ledger, final)
    print(f"backlog: {full.readings:,d} readings accumulated with the broker down "
          f"({accepted / fill_s:,.0f} readings/s accepted, buffer file {size / 1e6:.0f} MB)")
    print(f"  bytes written         {written / accepted:12.1f} per accepted reading "
          "(/proc/<pid>/io write_bytes)")
    print(f"  agent peak RSS        {peak / 1e6:12.1f} MB (VmHWM, start to full backlog)")
    print(f"  drained               {full.readings / drain_s:12,.0f} readings/s "
          f"({drain_s:.1f} s){' INCOMPLETE' if missing else ''}")
    print(f"  lost                  {len(result.lost):12,d} (duplicated {result.duplicates}, "
          f"seq reused {len(result.conflicts)})")


def _at_least(view: BufferView, readings: int) -> BufferView | None:
    return view if view.readings >= readings else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs in phase 1")
    parser.add_argument("--outage", type=float, default=600.0,
                        help="broker outage of phase 2 (s)")
    parser.add_argument("--backlog", type=int, default=10_000_000,
                        help="readings to accumulate in phase 3")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--registers", type=int, default=125)
    parser.add_argument("--interval", type=float, default=0.01,
                        help="poll interval of every device (s)")
    parser.add_argument("--max-inflight", type=int, default=8)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 30))
    parser.add_argument("--max-wait", type=float, default=1800.0,
                        help="bound of every wait for the agent (s)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edge-chaos-"))
    pki = make_pki(work / "pki")
    base_port = 20000 + os.getpid() % 20000
    sim = subprocess.Popen(  # cwd: the checkout must not shadow the installed package
        [sys.executable, "-m", "edge_agent.devtools.simulator", "--devices", str(args.devices),
         "--registers", str(args.registers), "--base-port", str(base_port),
         "--update-interval-s", "0.5"],
        stdout=subprocess.PIPE, stderr=(work / "simulator.log").open("wb"), text=True, cwd=work)
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"simulator did not start: {line!r}")
        ports = [base_port + i for i in range(args.devices)]
        offered = args.devices * args.registers / args.interval
        print(f"edge-agent chaos bench in {work} ({args.devices} devices x {args.registers} "
              f"registers every {args.interval} s = {offered:,.0f} readings/s offered)")
        with MosquittoBroker(work / "broker", ca_file=pki.ca_file, cert_file=pki.server_cert,
                             key_file=pki.server_key) as broker:
            rig = Rig(work=work, pki=pki, broker=broker, ports=ports, args=args)
            if args.kills:
                kills(rig)
            if args.outage:
                outage(rig)
            if args.backlog:
                backlog(rig)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
