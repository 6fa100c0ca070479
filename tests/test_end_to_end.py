"""The whole data path on loopback: simulated Modbus devices -> agent -> Mosquitto with
mutual TLS -> a subscriber, as the platform sees it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import Pki
from edge_agent.devtools.simulator import SimulatedSite
from edge_agent.devtools.watch import Received, Watcher
from edge_agent.drivers.modbus.config import Table
from edge_agent.telemetry.contract import batches_of

DOCS = Path(__file__).resolve().parent.parent / "docs"
TOPIC = "city/town/gw-e2e/telemetry"


@pytest.fixture
def schema() -> dict[str, Any]:
    return dict(json.loads((DOCS / "telemetry-v1.schema.json").read_text()))


def telemetry(messages: list[Received]) -> list[dict[str, Any]]:
    return [orjson.loads(m.payload) for m in messages if m.topic == TOPIC]


def seqs(messages: list[Received]) -> list[int]:
    return [int(b["seq"]) for doc in telemetry(messages) for b in batches_of(doc)]


def readings(docs: list[dict[str, Any]], device: str) -> list[tuple[str, dict[str, Any]]]:
    return [(s["ts"], s["values"]) for d in docs for b in batches_of(d) for s in b["samples"]
            if s["device"] == device and s["quality"] == "good"]


async def test_values_set_on_devices_arrive_decoded_with_timestamps_and_sequence(
        site: SimulatedSite, broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig], schema: dict[str, Any]) -> None:
    """Register values written on the simulator reach the platform decoded, valid against
    the schema, with UTC timestamps and strictly increasing sequence numbers."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", 231.25))
    p_hi, p_lo = struct.unpack(">HH", struct.pack(">i", -12345))
    site.set_registers(0, 0, [hi, lo, p_lo, p_hi, struct.unpack(">H", struct.pack(">h", -7))[0]])
    energy = struct.unpack(">HH", struct.pack("<I", 4_000_000_123))
    site.set_registers(0, 0, list(energy), table=Table.INPUT)
    site.set_coils(0, 3, [True])
    site.set_registers(1, 0, list(range(100, 130)))
    seen = watcher(broker, "city/#")
    started = time.time()
    async with Agent(make_config()):
        messages = await seen.wait_until_async(
            lambda ms: bool(readings(telemetry(ms), "meter")) and bool(
                readings(telemetry(ms), "station")), what="readings of both devices")
    docs = telemetry(messages)
    for doc in docs:
        jsonschema.validate(doc, schema)
        assert (doc["v"], doc["gateway"], doc["site"]) == (1, "gw-e2e", "town")
    numbers = seqs(messages)
    assert numbers == sorted(set(numbers)) and numbers[0] >= 1
    meter = {k: v for _, values in readings(docs, "meter") for k, v in values.items()}
    assert meter == {"voltage": 231.25, "power": pytest.approx(-1234.5), "temp": -13.5,
                     "energy": 4_000_000_123, "relay": True}
    ts, station = readings(docs, "station")[0]
    assert station == {f"counter_{i}": 100 + i for i in range(30)}
    stamp = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert ts.endswith("Z") and started - 1 <= stamp <= time.time() + 1
    status = [orjson.loads(m.payload) for m in messages if m.topic.endswith("/status")]
    assert status[0]["state"] == "online"


async def test_broker_outage_buffers_then_delivers_everything_in_order(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """While the broker is down readings accumulate in SQLite; once it is back every
    message arrives, in sequence order, with no gap."""
    seen = watcher(broker, TOPIC)
    async with Agent(make_config()) as agent:
        assert agent.writer is not None and agent.store is not None
        await seen.wait_for_async(1)
        broker.stop()
        commits = agent.writer.commits
        await agent.writer.wait_for_commits(commits + 10)  # polling goes on meanwhile
        backlog = agent.store.stats().last_seq
        seen.stop()
        broker.start()
        seen = watcher(broker, TOPIC)
        messages = await seen.wait_until_async(
            lambda ms: backlog in seqs(ms), what=f"seq {backlog} delivered after the outage")
    first_seen: list[int] = []
    for number in seqs(messages):
        if number not in first_seen:
            first_seen.append(number)
    # Everything up to the backlog's end arrives once the broker is back, oldest first.
    assert first_seen == sorted(first_seen)
    assert set(range(first_seen[0], backlog + 1)) <= set(first_seen)


def run_agent(config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # cwd: `python -m` puts the working directory first on sys.path; the checkout's
    # edge_agent/ (without drivers/) must not shadow the installed package.
    return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", str(config)], env=env,
                            stderr=subprocess.PIPE, cwd=config.parent)


def buffered(db: Path) -> tuple[int, set[int]]:
    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='batch'").fetchone()
        rows = {r[0] for r in conn.execute("SELECT seq FROM batch")}
    return (last[0] if last else 0), rows


async def test_sigterm_and_restart_lose_nothing_and_continue_the_sequence(
        tmp_path: Path, broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """SIGTERM with the broker down keeps the unsent readings on disk; the restarted agent
    sends them and continues the sequence without reusing or skipping a number."""
    make_config()
    config = tmp_path / "agent.yaml"
    seen = watcher(broker, TOPIC)
    agent = run_agent(config)
    try:
        await seen.wait_for_async(3)
        broker.stop()  # now readings can only pile up in the buffer
        seen.stop()
        target = max(seqs(seen.messages)) + 5
        for _ in range(600):  # the buffer file is all there is to watch from outside
            if buffered(tmp_path / "buffer.db")[0] >= target:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"the agent did not commit up to seq {target} during the outage")
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
        assert agent.returncode == 0, err.decode()
    finally:
        if agent.poll() is None:
            agent.kill()
    last_before, pending = buffered(tmp_path / "buffer.db")
    assert pending, "the outage should have left unsent messages in the buffer"
    assert b"still buffered for the next start" in err
    broker.start()
    seen = watcher(broker, TOPIC)
    agent = run_agent(config)
    try:
        messages = await seen.wait_until_async(
            lambda ms: any(s > last_before for s in seqs(ms)) and pending <= set(seqs(ms)),
            what="the buffered messages and new ones")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
    after = set(seqs(messages))
    assert pending <= after
    assert min(s for s in after if s > last_before) == last_before + 1


async def test_wrong_broker_certificate_is_refused_and_reported_clearly(
        pki: Pki, broker_factory: Callable[..., MosquittoBroker],
        make_config: Callable[..., AgentConfig], caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    """A broker presenting a certificate from another CA is never sent data; the log says
    why, and readings stay buffered."""
    impostor = broker_factory(cert_file=pki.other_server_cert, key_file=pki.other_server_key)
    config = make_config()
    uplink = config.uplink.__class__(**{**_fields(config.uplink), "port": impostor.tls_port})
    config = config.__class__(**{**_fields(config), "uplink": uplink})
    async with Agent(config) as agent:
        assert agent.writer is not None and agent.forwarder is not None
        await agent.writer.wait_for_commits(3)
        assert agent.forwarder.acked_messages == 0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("not trusted by ca_file" in e for e in errors), errors


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
