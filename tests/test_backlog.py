"""Backpressure end to end: a backlog drains in fewer, larger messages, flagged historical,
oldest first or live first, within the broker's MQTT 5 limits.

The drain order is checked on a real SQLite buffer with a controlled clock (which batches
go out next is a decision, not a race); the rest with the real agent, simulated Modbus
devices and a real Mosquitto.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from edge_agent.agent import Agent
from edge_agent.buffer import BufferStore
from edge_agent.config import AgentConfig, Durability
from edge_agent.config.model import DrainOrder
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.watch import Received, Watcher
from edge_agent.telemetry.contract import BATCH_OVERHEAD, Kind, batches_of
from edge_agent.uplink.forwarder import _Drain

DOCS = Path(__file__).resolve().parent.parent / "docs"
TELEMETRY = "city/town/gw-e2e/telemetry"
STATUS = "city/town/gw-e2e/status"
BODY = b'"samples":[' + b",".join([b'{"device":"d","ts":"2026-11-24T00:00:00.000Z",'
                                   b'"quality":"good","values":{"r":1}}'] * 10) + b"]"


def stored(tmp_path: Path, now: list[float]) -> BufferStore:
    return BufferStore(tmp_path / "b.db", durability=Durability.FULL, max_bytes=1 << 30,
                       clock=lambda: now[0])


def add(store: BufferStore, count: int, created: float) -> list[int]:
    return store.append([(10, BODY, Kind.TELEMETRY)] * count, created=created)


def seqs(group: list[Any]) -> list[int]:
    return [b.seq for b in group]


def test_oldest_first_coalesces_consecutive_batches_up_to_the_size(tmp_path: Path) -> None:
    """One cursor in sequence order; each message takes as many batches as fit."""
    now = [1000.0]
    store = stored(tmp_path, now)
    add(store, 7, created=900.0)
    fit = 3 * (len(BODY) + BATCH_OVERHEAD)
    drain = _Drain(DrainOrder.OLDEST_FIRST, last_seq=store.last_seq, lag_s=10,
                   clock=lambda: now[0])
    groups = [seqs(drain.next(store, batches=100, max_bytes=fit, pending=set()))
              for _ in range(4)]
    assert groups == [[1, 2, 3], [4, 5, 6], [7], []]
    add(store, 2, created=1000.0)
    assert seqs(drain.next(store, batches=1, max_bytes=fit, pending=set())) == [8]
    store.close()


def test_live_first_sends_new_batches_before_the_backlog(tmp_path: Path) -> None:
    """What was stored when the connection came up is the backlog; batches committed since
    go first, the backlog fills in behind, each stream in order."""
    now = [1000.0]
    store = stored(tmp_path, now)
    add(store, 6, created=500.0)  # the outage's backlog: seq 1..6
    drain = _Drain(DrainOrder.LIVE_FIRST, last_seq=store.last_seq, lag_s=10,
                   clock=lambda: now[0])
    fit = 2 * (len(BODY) + BATCH_OVERHEAD)

    def take() -> list[int]:
        return seqs(drain.next(store, batches=100, max_bytes=fit, pending=set()))

    assert take() == [1, 2]  # nothing live yet: the backlog drains
    add(store, 1, created=1000.0)  # live: seq 7
    assert take() == [7]
    assert take() == [3, 4]
    add(store, 1, created=1000.0)  # seq 8
    assert [take(), take(), take()] == [[8], [5, 6], []]
    store.close()


def test_live_data_that_falls_behind_joins_the_backlog(tmp_path: Path) -> None:
    """When the broker is slower than the devices, live batches older than lag_s become
    backlog and live restarts at the newest commit; batches already sent (pending) are not
    sent again from the backlog."""
    now = [1000.0]
    store = stored(tmp_path, now)
    drain = _Drain(DrainOrder.LIVE_FIRST, last_seq=store.last_seq, lag_s=10,
                   clock=lambda: now[0])
    one = len(BODY) + BATCH_OVERHEAD

    def take(pending: set[int] | None = None) -> list[int]:
        return seqs(drain.next(store, batches=100, max_bytes=one, pending=pending or set()))

    add(store, 4, created=1000.0)
    assert take() == [1]  # sent, not yet acknowledged
    now[0] = 1020.0  # 2..4 waited 20 s: live is behind
    add(store, 2, created=1020.0)  # seq 5, 6
    assert take(pending={1}) == [2]  # backlog now: 1 is skipped (still pending)
    assert drain.boundary == 6
    add(store, 1, created=1020.0)  # seq 7: live again
    assert [take(pending={1, 2}), take(pending={1, 2})] == [[7], [3]]
    store.close()


def telemetry(messages: list[Received]) -> list[Received]:
    return [m for m in messages if m.topic == TELEMETRY]


async def stall(broker: MosquittoBroker, agent: Agent, *, commits: int) -> None:
    """A broker that stops answering (paused) while the agent commits ``commits`` more
    times, then answers again: the connection stays up, the window fills."""
    assert agent.writer is not None
    await agent.writer.wait_for_commits(2)
    broker.pause()
    try:
        await agent.writer.wait_for_commits(agent.writer.commits + commits)
    finally:
        broker.resume()


async def test_a_slow_broker_gets_fewer_larger_messages(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """While the broker does not answer (paused), batches pile up in the buffer, not in
    memory; when it answers again they go out coalesced: fewer messages than batches, none
    above max_message_bytes, the old ones flagged historical, all in order, valid against
    the schema."""
    schema = json.loads((DOCS / "telemetry-v1.schema.json").read_text())
    config = make_config()
    config = dataclasses.replace(config, uplink=dataclasses.replace(
        config.uplink, max_message_bytes=4096, historical_after_s=0.5))
    seen = watcher(broker, TELEMETRY)
    async with Agent(config) as agent:
        assert agent.store is not None
        # 40 group commits of 50 ms: the oldest waiting batch is 2 s old at the end.
        await stall(broker, agent, commits=40)
        backlog_end = agent.store.last_seq
        messages = telemetry(await seen.wait_until_async(
            lambda ms: backlog_end + 3 <= max(
                (b["seq"] for m in telemetry(ms) for b in batches_of(orjson.loads(m.payload))),
                default=0),
            what=f"batches up to {backlog_end + 3}"))
    docs = [orjson.loads(m.payload) for m in messages]
    for doc in docs:
        jsonschema.validate(doc, schema)
    numbers = [b["seq"] for d in docs for b in batches_of(d)]
    assert numbers == sorted(set(numbers)) == list(range(1, numbers[-1] + 1))
    assert all(len(m.payload) <= 4096 for m in messages)
    assert len(docs) < len(numbers)
    coalesced = [d for d in docs if "batches" in d]
    assert coalesced and all(d["seq_last"] == d["batches"][-1]["seq"] for d in coalesced)
    assert any(d.get("historical") for d in docs)
    assert not docs[-1].get("historical")  # live again once the backlog is gone


async def test_live_first_after_an_outage_delivers_everything_in_two_ordered_streams(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig],
        fill_then_reconnect: Callable[..., Any]) -> None:
    """With drain: live_first, the outage's backlog and the live readings both arrive
    complete; each stream in order; the backlog flagged historical."""
    config = make_config()
    config = dataclasses.replace(config, uplink=dataclasses.replace(
        config.uplink, drain=DrainOrder.LIVE_FIRST, max_message_bytes=4096, max_inflight=2,
        historical_after_s=0.5))
    broker.stop()
    outage: list[int] = []

    def filled(agent: Agent) -> bool:
        assert agent.writer is not None and agent.store is not None
        if agent.writer.commits < start + 30:
            return False
        outage.append(agent.store.last_seq)  # stored before the broker came back
        return True

    async with Agent(config) as agent:
        assert agent.writer is not None and agent.store is not None
        start = agent.writer.commits
        messages = await fill_then_reconnect(agent, broker, filled)
    docs = [orjson.loads(m.payload) for m in telemetry(messages)]
    numbers = [b["seq"] for d in docs for b in batches_of(d)]
    # Complete up to what was stored when the broker came back (fill_then_reconnect waited
    # for that); later batches may still be on their way, the backlog stream last.
    assert set(range(1, outage[0] + 1)) <= set(numbers)
    backlog = [seq for seq in numbers if seq <= outage[0]]
    assert backlog == sorted(backlog)
    first_backlog = next(d for d in docs if d["seq"] <= outage[0])
    assert first_backlog.get("historical")  # 1.5 s of outage: older than 0.5 s


async def test_an_agent_works_within_the_brokers_connack_limits(
        broker_factory: Callable[..., MosquittoBroker], watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """A broker announcing Receive Maximum 4, Maximum Packet Size 2000 and no retained
    messages: the agent connects once (it retries a refused retained will without retain),
    keeps every message within the packet size, fills but never exceeds the receive window
    (one slot kept for status and ledger) while the broker stalls, and delivers in order."""
    limited = broker_factory(settings={"max_packet_size": "2000", "max_inflight_messages": "4",
                                       "retain_available": "false"})
    config = make_config()
    config = dataclasses.replace(config, uplink=dataclasses.replace(
        config.uplink, port=limited.tls_port, max_inflight=16))
    seen = watcher(limited, "city/town/gw-e2e/#")
    async with Agent(config) as agent:
        assert agent.forwarder is not None
        await stall(limited, agent, commits=10)
        messages = await seen.wait_until_async(
            lambda ms: len(telemetry(ms)) >= 40, what="40 telemetry messages")
        assert agent.forwarder.peak_inflight == 4 - 1
    statuses = [orjson.loads(m.payload)["state"] for m in messages if m.topic == STATUS]
    assert statuses == ["online"]
    assert not any(m.retain for m in messages)
    assert all(len(m.payload) <= 2000 - (5 + 2 + len(TELEMETRY) + 2 + 1)
               for m in telemetry(messages))
    numbers = [b["seq"] for m in telemetry(messages)
               for b in batches_of(orjson.loads(m.payload))]
    assert numbers == list(range(1, len(numbers) + 1))


async def test_a_batch_larger_than_the_brokers_packet_limit_is_ledgered_not_retried(
        broker_factory: Callable[..., MosquittoBroker], watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig],
        docs_of: Callable[[list[Received], str], list[dict[str, Any]]]) -> None:
    """A stored batch that can never fit the broker's Maximum Packet Size is discarded
    unsent (MQTT 5) and recorded as rejected_by_broker in the ledger, which does fit; the
    connection and the flow go on."""
    tight = broker_factory(settings={"max_packet_size": "700"})
    config = make_config()
    config = dataclasses.replace(
        config, uplink=dataclasses.replace(config.uplink, port=tight.tls_port),
        buffer=dataclasses.replace(config.buffer, max_message_readings=1000))
    seen = watcher(tight, "city/town/gw-e2e/#")
    async with Agent(config):
        messages = await seen.wait_until_async(
            lambda ms: sum(e["messages"] for d in docs_of(ms, "ledger")
                           for e in d["entries"] if e["reason"] == "rejected_by_broker") >= 5,
            what="ledger entries for 5 batches too large for the broker")
    entries = [e for d in docs_of(messages, "ledger") for e in d["entries"]]
    assert all("packet too large" in e["detail"] for e in entries)
    statuses = [orjson.loads(m.payload)["state"] for m in messages if m.topic == STATUS]
    assert statuses == ["online"]


async def test_coalesce_false_keeps_one_batch_per_message(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig]) -> None:
    """uplink.coalesce: false (a platform that does not read the batches form yet): even
    after a stall every message carries one batch, in the plain form, and all arrive."""
    config = make_config()
    config = dataclasses.replace(config, uplink=dataclasses.replace(config.uplink,
                                                                    coalesce=False))
    seen = watcher(broker, TELEMETRY)
    async with Agent(config) as agent:
        assert agent.store is not None
        await stall(broker, agent, commits=20)
        target = agent.store.last_seq
        messages = await seen.wait_until_async(
            lambda ms: target <= max((orjson.loads(m.payload)["seq"] for m in ms), default=0),
            what=f"seq {target}")
    docs = [orjson.loads(m.payload) for m in messages]
    assert not any("batches" in d for d in docs)
    assert [d["seq"] for d in docs] == list(range(1, len(docs) + 1))
