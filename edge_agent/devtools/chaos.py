"""Harness pieces for the chaos suite (tests/test_chaos.py) and the long run (bench/chaos.py).

The agent runs as a real subprocess (``python -m edge_agent run``) so that it can be
SIGKILLed, frozen and measured through ``/proc``. The platform's side is a
:class:`SeqLedger` fed by a :class:`~edge_agent.devtools.watch.Watcher`: it remembers a
digest of the first copy of every sequence number and counts duplicates. At the end
:func:`reconcile` sets what the subscriber saw against the buffer file: every number from 1
to the highest ever assigned (``sqlite_sequence``) must be received or still stored.

    ledger = SeqLedger(topic)
    with Watcher(..., topic=topic, on_message=ledger, keep=False):
        agent = AgentProcess(config_file, log_file=work / "agent.log")
        agent.start(); ...; agent.kill(); agent.start(); ...
        result = reconcile(ledger, read_buffer(db))
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import Pki
from edge_agent.devtools.watch import Received
from edge_agent.telemetry.contract import batches_of

__all__ = [
    "AgentProcess",
    "BufferView",
    "Reconciliation",
    "SeqLedger",
    "chaos_config",
    "duplicates_per_epoch",
    "open_copy",
    "quiesce_and_stop_broker",
    "read_buffer",
    "reconcile",
    "snapshot_buffer",
    "uncompressed_body_bytes",
]

GATEWAY = "gw-chaos"
SITE = "lab"
PREFIX = "chaos"
TELEMETRY_TOPIC = f"{PREFIX}/{SITE}/{GATEWAY}/telemetry"


def chaos_config(*, pki: Pki, broker_port: int, ports: list[int], buffer: Path,
                 registers: int = 60, interval_s: float = 0.02, durability: str = "full",
                 max_inflight: int = 8, commit_interval_s: float = 0.05,
                 max_message_readings: int = 50, log_level: str = "INFO") -> str:
    """Agent YAML: one Modbus TCP device per port (``registers`` uint16 holding registers
    each, polled every ``interval_s``), mutual TLS to the broker, fast reconnects."""
    devices = "\n".join(f"""\
  - name: dev-{i}
    driver: modbus_tcp
    connection: {{host: 127.0.0.1, port: {port}, timeout_s: 2.0}}
    interval_s: {interval_s}
    reconnect_initial_s: 0.05
    reconnect_max_s: 0.5
    points:
      - {{name: hr, table: holding, address: 0, type: uint16, repeat: {registers}}}"""
                        for i, port in enumerate(ports))
    return f"""\
gateway: {{id: {GATEWAY}, site: {SITE}}}
log_level: {log_level}
uplink:
  host: 127.0.0.1
  port: {broker_port}
  topic_prefix: {PREFIX}
  max_inflight: {max_inflight}
  reconnect_initial_s: 0.05
  reconnect_max_s: 0.3
  shutdown_grace_s: 5
  tls: {{ca_file: {pki.ca_file}, cert_file: {pki.client_cert}, key_file: {pki.client_key}}}
buffer:
  path: {buffer}
  durability: {durability}
  commit_interval_s: {commit_interval_s}
  max_message_readings: {max_message_readings}
devices:
{devices}
"""


# -- the agent as a process ---------------------------------------------------------------

class AgentProcess:
    """``python -m edge_agent run <config>`` as a child, restartable, with /proc figures.

    Its stderr (the log) is appended to ``log_file``: a pipe nobody reads would block a
    chatty agent. The working directory is the config's folder, not the checkout (which
    would shadow the installed package on ``sys.path``).
    """

    def __init__(self, config: Path, *, log_file: Path) -> None:
        self.config = config
        self.log_file = log_file
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the agent is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError("the agent is already running")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", str(self.config)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.config.parent)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed; what is on disk is what remains."""
        process = self._require()
        process.kill()
        process.wait(timeout=30)

    def terminate(self, *, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the clean shutdown; returns the exit status."""
        process = self._require()
        process.terminate()
        return process.wait(timeout=timeout_s)

    def stop_quietly(self) -> None:
        """For ``finally`` blocks: kill the agent if it still runs."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.kill()
            self._process.wait(timeout=30)

    def freeze(self) -> None:
        """SIGSTOP every thread: the files stay as they are, between two write() calls."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def rss_bytes(self) -> int:
        return _status_kib(self.pid, "VmRSS:") * 1024

    def peak_rss_bytes(self) -> int:
        return _status_kib(self.pid, "VmHWM:") * 1024

    def write_bytes(self) -> int:
        """Bytes this process caused to be sent to storage (``/proc/<pid>/io``)."""
        io = Path(f"/proc/{self.pid}/io").read_text()
        return next(int(line.split()[1]) for line in io.splitlines()
                    if line.startswith("write_bytes:"))

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def _require(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the agent was never started")
        return self._process


def _batch_digest(batch: dict[str, Any]) -> bytes:
    """The readings of a batch, whichever message form and flags it came with."""
    content = {k: v for k, v in batch.items() if k not in _ENVELOPE_MEMBERS}
    return hashlib.blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).digest()


_ENVELOPE_MEMBERS = frozenset({"v", "gateway", "site", "historical", "seq_last"})


def _status_kib(pid: int, key: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(key))


# -- the buffer file from outside ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BufferView:
    """What one connection sees of a buffer file: committed transactions only."""

    last_seq: int
    """Highest sequence number ever assigned (``sqlite_sequence``), 0 before the first."""
    seqs: frozenset[int]
    """Batches still stored (not yet acknowledged and deleted)."""
    readings: int
    body_bytes: int
    """Stored (compressed) body bytes."""


_EMPTY = BufferView(last_seq=0, seqs=frozenset(), readings=0, body_bytes=0)


def read_buffer(db: Path, *, timeout_s: float = 10.0) -> BufferView:
    """Read the buffer with a read-only connection of our own (works while the agent
    writes: WAL). A file the agent has not created yet, or not initialised, reads empty."""
    if not db.exists():
        return _EMPTY
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout_s)
    try:
        return _view(conn)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return _EMPTY
        raise
    finally:
        conn.close()


def _view(conn: sqlite3.Connection) -> BufferView:
    conn.execute("BEGIN")  # one read snapshot for every query below
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batch'").fetchone()
        seqs = frozenset(r[0] for r in conn.execute("SELECT seq FROM batch"))
        readings, size = conn.execute(
            "SELECT coalesce(sum(readings), 0), coalesce(sum(length(body)), 0) FROM batch"
        ).fetchone()
    finally:
        conn.execute("COMMIT")
    return BufferView(last_seq=row[0] if row else 0, seqs=seqs, readings=int(readings),
                      body_bytes=int(size))


def quiesce_and_stop_broker(agent: AgentProcess, db: Path, ledger: SeqLedger,
                            broker: MosquittoBroker, *, timeout_s: float) -> BufferView:
    """Stop the broker under load without the subscriber missing what it acknowledged.

    The broker here keeps no persistence: a message it acknowledged but had not yet
    forwarded when stopped would be lost between broker and subscriber, which is not the
    agent's doing. So the agent is frozen first, the subscriber gets everything the agent
    already deleted (acknowledged), then the broker stops and the agent resumes. Returns
    the buffer as it was at the stop.
    """
    agent.freeze()
    try:
        at_stop = read_buffer(db)
        deleted = set(range(1, at_stop.last_seq + 1)) - at_stop.seqs
        ledger.wait_for(deleted, timeout_s=timeout_s)
        broker.stop()
    finally:
        agent.thaw()
    return at_stop


def uncompressed_body_bytes(db: Path) -> int:
    """Size of the stored message bodies once decompressed (what RAM would have to hold)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
    try:
        return sum(len(zlib.decompress(body)) for (body,) in conn.execute("SELECT body FROM batch"))
    finally:
        conn.close()


def snapshot_buffer(db: Path, dest: Path, agent: AgentProcess) -> Path:
    """Copy the database and its WAL as they stand, with the agent frozen meanwhile.

    This is the state a power cut at a write boundary leaves behind when the storage keeps
    the order of writes: every write() the agent made is in the copy, none is torn (SIGSTOP
    takes effect between system calls). The ``-shm`` index is not copied: it is rebuilt
    from the WAL when the copy is opened, as after a reboot. It does not model a torn
    sector, nor the loss of writes the kernel had not yet flushed (see tests/test_chaos.py).
    """
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / db.name
    agent.freeze()
    try:
        shutil.copyfile(db, target)
        wal = db.with_name(db.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, target.with_name(target.name + "-wal"))
    finally:
        agent.thaw()
    return target


def open_copy(copy: Path) -> tuple[str, BufferView]:
    """``PRAGMA integrity_check`` and the view of a copied buffer (recovering its WAL)."""
    conn = sqlite3.connect(copy, timeout=10.0)
    try:
        check = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        return check, _view(conn)
    finally:
        conn.close()


# -- the platform's side ------------------------------------------------------------------

@dataclass(slots=True)
class SeqLedger:
    """Sequence numbers seen on the telemetry topic (a Watcher's ``on_message``; thread-safe).

    Works per stored batch (``batches_of``: a coalesced message carries several). Keeps a
    digest of each number's first copy, so that a duplicate can be checked to carry the same
    readings and a reused number (same seq, other readings) is caught.
    """

    topic: str = TELEMETRY_TOPIC
    count_readings: bool = True
    first: dict[int, bytes] = field(default_factory=dict)
    readings: int = 0
    """Readings of the first copies (duplicates not counted)."""
    duplicates: int = 0
    """Batches received again."""
    duplicate_messages: int = 0
    """Messages that carried at least one batch received before."""
    conflicts: dict[int, int] = field(default_factory=dict)
    """seq -> how many copies differed from the first one (must stay empty)."""
    arrivals: list[tuple[int, ...]] = field(default_factory=list)
    """The batch numbers of every message in arrival order, duplicates included."""
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, message: Received) -> None:
        if message.topic != self.topic:
            return
        batches = batches_of(orjson.loads(message.payload))
        with self.changed:
            self.arrivals.append(tuple(int(b["seq"]) for b in batches))
            repeated = False
            for batch in batches:
                seq = int(batch["seq"])
                digest = _batch_digest(batch)
                known = self.first.get(seq)
                if known is None:
                    self.first[seq] = digest
                    if self.count_readings:
                        self.readings += sum(len(s["values"]) for s in batch["samples"])
                else:
                    self.duplicates += 1
                    repeated = True
                    if known != digest:
                        self.conflicts[seq] = self.conflicts.get(seq, 0) + 1
            self.duplicate_messages += repeated
            self.changed.notify_all()

    def first_copies(self) -> list[int]:
        """Batch numbers in the order of their first arrival."""
        seen: set[int] = set()
        order: list[int] = []
        with self.changed:
            for message in self.arrivals:
                for seq in message:
                    if seq not in seen:
                        seen.add(seq)
                        order.append(seq)
        return order

    def seen(self) -> set[int]:
        with self.changed:
            return set(self.first)

    def wait_for(self, seqs: set[int] | frozenset[int], *, timeout_s: float) -> set[int]:
        """Block until every number in ``seqs`` arrived; returns those still missing."""
        with self.changed:
            self.changed.wait_for(lambda: seqs <= self.first.keys(), timeout_s)
            return set(seqs) - self.first.keys()

    def wait_count(self, count: int, *, timeout_s: float) -> bool:
        """Block until ``count`` distinct numbers arrived."""
        with self.changed:
            return self.changed.wait_for(lambda: len(self.first) >= count, timeout_s)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    last_seq: int
    received: int
    """Distinct sequence numbers received."""
    still_buffered: frozenset[int]
    lost: frozenset[int]
    """Neither received nor stored: unexplained loss."""
    duplicates: int
    """Batches received more than once."""
    duplicate_messages: int
    """Messages that carried a batch received before (the in-flight window bounds these)."""
    conflicts: dict[int, int]
    """Reused numbers: seq -> copies with another payload than the first."""
    beyond: frozenset[int]
    """Received numbers above ``last_seq`` (the buffer never assigned them: impossible)."""


def reconcile(ledger: SeqLedger, buffer: BufferView) -> Reconciliation:
    """Every seq in 1..last_seq must be received or still stored."""
    with ledger.changed:
        seen = set(ledger.first)
        duplicates = ledger.duplicates
        duplicate_messages = ledger.duplicate_messages
        conflicts = dict(ledger.conflicts)
    expected = set(range(1, buffer.last_seq + 1))
    return Reconciliation(
        last_seq=buffer.last_seq, received=len(seen), still_buffered=buffer.seqs,
        lost=frozenset(expected - seen - buffer.seqs), duplicates=duplicates,
        duplicate_messages=duplicate_messages, conflicts=conflicts,
        beyond=frozenset(s for s in seen if s > buffer.last_seq))


def duplicates_per_epoch(arrivals: list[tuple[int, ...]], marks: list[int]) -> list[int]:
    """Messages carrying a batch received before, per epoch: ``marks`` are message arrival
    counts at each (re)start."""
    seen: set[int] = set()
    counts = [0] * len(marks)
    epoch = -1
    for index, message in enumerate(arrivals):
        while epoch + 1 < len(marks) and index >= marks[epoch + 1]:
            epoch += 1
        if not seen.isdisjoint(message):
            counts[max(epoch, 0)] += 1
        seen.update(message)
    return counts
