"""The loss ledger reaches the platform: every sequence number is delivered or explained."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema

from edge_agent.agent import Agent
from edge_agent.buffer.store import LossReason
from edge_agent.config import AgentConfig, OverflowPolicy
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import Pki
from edge_agent.devtools.watch import Received, Watcher

DOCS = Path(__file__).resolve().parent.parent / "docs"
BASE = "city/town/gw-e2e"

# The conftest fixtures docs_of, explained and fill_then_reconnect (a test module cannot
# import from conftest).
DocsOf = Callable[[list[Received], str], list[dict[str, Any]]]
Seqs = Callable[[list[Received]], set[int]]
FillThenReconnect = Callable[..., Awaitable[list[Received]]]


async def test_cap_evictions_during_an_outage_are_reported_and_reconcile(
        broker: MosquittoBroker, make_config: Callable[..., AgentConfig], docs_of: DocsOf,
        fill_then_reconnect: FillThenReconnect) -> None:
    """With the broker down and a tiny buffer, the oldest messages are evicted; once the
    broker is back the ledger arrives and, with the telemetry, explains every number."""
    config = make_config()
    config = dataclasses.replace(
        config, buffer=dataclasses.replace(config.buffer, max_bytes=64 * 1024))
    broker.stop()
    async with Agent(config) as agent:
        messages = await fill_then_reconnect(
            agent, broker,
            lambda a: a.store is not None and "evicted_by_cap" in a.store.ledger_totals())
    schema = json.loads((DOCS / "ledger-v1.schema.json").read_text())
    ledgers = docs_of(messages, "ledger")
    for ledger in ledgers:
        jsonschema.validate(ledger, schema)
    reasons = {e["reason"] for ledger in ledgers for e in ledger["entries"]}
    assert reasons == {"evicted_by_cap"}
    assert ledgers[-1]["totals"]["evicted_by_cap"] > 0


async def test_messages_the_broker_refuses_are_ledgered_and_flow_goes_on(
        pki: Pki, broker_factory: Callable[..., MosquittoBroker],
        watcher: Callable[..., Watcher], make_config: Callable[..., AgentConfig],
        tmp_path: Path, docs_of: DocsOf) -> None:
    """Under MQTT 5 a telemetry message the broker's ACL refuses (0x87) is recorded as
    rejected_by_broker and reported; the agent does not retry it forever."""
    acl = (f"user {pki.client_common_name}\n"
           f"topic readwrite {BASE}/status\ntopic readwrite {BASE}/ledger\n"
           "topic read city/#\n")
    strict = broker_factory(acl=acl)
    config = make_config()
    config = dataclasses.replace(
        config, uplink=dataclasses.replace(config.uplink, port=strict.tls_port))
    seen = watcher(strict, f"{BASE}/#")
    async with Agent(config):
        messages = await seen.wait_until_async(
            lambda ms: any(e["reason"] == "rejected_by_broker"
                           for d in docs_of(ms, "ledger") for e in d["entries"]),
            what="a ledger entry for a refused message")
    assert not docs_of(messages, "telemetry")
    entry = next(e for d in docs_of(messages, "ledger") for e in d["entries"])
    # A refused message may carry several batches: the entry covers exactly their range.
    assert entry["last_seq"] - entry["first_seq"] + 1 == entry["messages"] >= 1
    assert "0x87" in entry["detail"]


async def test_drop_newest_refusals_reach_the_platform(
        broker: MosquittoBroker, make_config: Callable[..., AgentConfig], docs_of: DocsOf,
        delivered: Callable[[list[Received]], set[int]],
        fill_then_reconnect: FillThenReconnect) -> None:
    """Under drop_newest the stored backlog is delivered and the refused ranges are
    reported, so every number is again accounted for."""
    config = make_config()
    config = dataclasses.replace(config, buffer=dataclasses.replace(
        config.buffer, max_bytes=64 * 1024, policy=OverflowPolicy.DROP_NEWEST))
    broker.stop()
    async with Agent(config) as agent:
        messages = await fill_then_reconnect(
            agent, broker,
            lambda a: a.store is not None and "refused_by_cap" in a.store.ledger_totals())
    refused = {s for d in docs_of(messages, "ledger") for e in d["entries"]
               for s in range(e["first_seq"], e["last_seq"] + 1)}
    assert min(delivered(messages)) == 1  # the oldest were kept
    assert refused and min(refused) > 1


async def test_block_policy_slows_polling_instead_of_dropping(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig], docs_of: DocsOf, explained: Seqs) -> None:
    """Under block a full buffer holds polling back (skipped ticks grow, nothing is
    ledgered); when the uplink frees room everything stored is delivered without gaps."""
    config = make_config()
    config = dataclasses.replace(config, buffer=dataclasses.replace(
        config.buffer, max_bytes=64 * 1024, policy=OverflowPolicy.BLOCK, queue_max_samples=8))
    broker.stop()
    async with Agent(config) as agent:
        assert agent.writer is not None and agent.store is not None
        skipped = sum(p.stats.skipped_ticks for p in agent.pollers)
        await agent.writer.blocking.wait()  # the buffer filled up: the writer stops taking
        agent.backpressure.clear()  # (the queue may have been full for a moment before)
        await agent.backpressure.wait()  # and now a poller waits for room in the queue
        assert agent.store.ledger_totals() == {}
        broker.start()
        seen = watcher(broker, f"{BASE}/telemetry")
        target = agent.store.last_seq
        messages = await seen.wait_until_async(
            lambda ms: set(range(1, target + 1)) <= explained(ms),
            what=f"sequence numbers 1..{target} delivered")
        # A poller counts the ticks it missed once its put went through: two more commits
        # and the held-back pollers have resumed.
        await agent.writer.wait_for_commits(agent.writer.commits + 2)
    assert agent.writer.blocked_s > 0
    assert sum(p.stats.skipped_ticks for p in agent.pollers) > skipped  # the slowdown
    assert not docs_of(messages, "ledger")


def test_every_loss_reason_is_in_the_ledger_schema() -> None:
    """The contract lists exactly the reasons the buffer can record."""
    schema = json.loads((DOCS / "ledger-v1.schema.json").read_text())
    entry = schema["properties"]["entries"]["items"]
    assert set(entry["properties"]["reason"]["enum"]) == {r.value for r in LossReason}


async def test_the_ledger_tells_the_position_on_connect_and_periodically(
        broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig], docs_of: DocsOf, explained: Seqs) -> None:
    """A ledger message goes out on every connect and every ledger_interval_s even with
    nothing lost, carrying last_seq and oldest_buffered: every number below
    oldest_buffered (up to last_seq) is then delivered or explained (docs/telemetry.md)."""
    schema = json.loads((DOCS / "ledger-v1.schema.json").read_text())
    config = make_config()
    config = dataclasses.replace(config, uplink=dataclasses.replace(config.uplink,
                                                                    ledger_interval_s=1.0))
    seen = watcher(broker, f"{BASE}/#")
    async with Agent(config):
        messages = await seen.wait_until_async(
            lambda ms: len(docs_of(ms, "ledger")) >= 3, what="three ledger messages")
        ledgers = docs_of(messages, "ledger")
        for ledger in ledgers:
            jsonschema.validate(ledger, schema)
        assert all(ledger["entries"] == [] for ledger in ledgers)  # nothing was lost
        latest = ledgers[-1]
        resolved = (latest["last_seq"] if latest["oldest_buffered"] is None
                    else latest["oldest_buffered"] - 1)
        assert resolved >= 1 and [d["last_seq"] for d in ledgers] == sorted(
            d["last_seq"] for d in ledgers)
        # Everything below the buffer's oldest number arrives (some may still be on their
        # way from the broker when the ledger message is read).
        await seen.wait_until_async(
            lambda ms: set(range(1, resolved + 1)) <= explained(ms),
            what=f"sequence numbers 1..{resolved}")
