"""Thinning old telemetry before dropping it (buffer.thin), on a real SQLite file and with
the real agent."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from edge_agent.agent import Agent
from edge_agent.buffer import BufferStore
from edge_agent.buffer.thinning import thin_bodies
from edge_agent.config import AgentConfig, Durability
from edge_agent.config.model import ThinRule
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.watch import Received
from edge_agent.drivers.base import Quality, Sample
from edge_agent.telemetry.contract import Kind, batches_of, encode_body

T0 = 1_700_000_000.0


def sample(device: str, t: float, values: dict[str, Any],
           quality: Quality = Quality.GOOD) -> Sample:
    return Sample(device, t, quality, tuple(values), list(values.values()),
                  None if quality is Quality.GOOD else "no answer")


def bodies_of(samples: list[Sample], per_body: int) -> list[bytes]:
    return [b.body for b in encode_body(samples, max_readings=per_body, offset=T0)]


def decoded(thinned: list[tuple[bytes, int]]) -> list[dict[str, Any]]:
    return [s for body, _ in thinned for s in orjson.loads(b"{" + body + b"}")["samples"]]


def test_keep_every_keeps_every_nth_good_sample_per_device_across_batches() -> None:
    samples = [sample(d, i, {"a": i, "b": -i}) for i in range(12) for d in ("x", "y")]
    samples.insert(5, sample("x", 2.5, {"a": None, "b": None}, Quality.BAD))
    thinned = thin_bodies(bodies_of(samples, per_body=6), ThinRule(keep_every=4))
    kept = decoded(thinned)
    assert [(s["device"], s["values"]["a"]) for s in kept if s["quality"] == "good"] == [
        ("x", 0), ("y", 0), ("x", 4), ("y", 4), ("x", 8), ("y", 8)]
    assert any(s["quality"] == "bad" for s in kept)  # bad samples are always kept
    assert sum(n for _, n in thinned) == sum(len(s["values"]) for s in kept) == 14


def test_min_max_keeps_each_points_extremes_per_window() -> None:
    """Per device, point and window: the lowest and the highest reading survive, with
    their own timestamps; a sample keeps only the points it holds an extreme of."""
    a = [5, 1, 9, 3, 7, 2, 8, 4]
    b = [0, 0, 0, 0, 6, 6, 6, 6]
    samples = [sample("x", 10.0 * i, {"a": a[i], "b": b[i], "on": True}) for i in range(8)]
    thinned = thin_bodies(bodies_of(samples, per_body=9), ThinRule(min_max_window_s=40))
    kept = decoded(thinned)
    by_point: dict[str, list[int]] = {}
    for s in kept:
        for point, value in s["values"].items():
            by_point.setdefault(point, []).append(value)
    # windows [0, 40) and [40, 80): a = 5 1 9 3 | 7 2 8 4 -> 1, 9 | 2, 8
    assert by_point["a"] == [1, 9, 2, 8]
    assert by_point["b"] == [0, 6]  # constant within a window: one reading stands for both
    assert by_point["on"] == [True, True]  # not a number: the first of each window
    assert sum(n for _, n in thinned) == 8


def test_a_full_buffer_thins_old_telemetry_before_evicting_anything(tmp_path: Path) -> None:
    """At the cap, telemetry older than older_than_s is thinned first (ledger 'thinned', the
    batches keep their numbers); whole batches are evicted only when nothing old is left
    to thin; recent telemetry and events are never thinned. Every reading is accounted
    for."""
    now = [T0]
    store = BufferStore(tmp_path / "b.db", durability=Durability.FULL, max_bytes=1 << 20,
                        thin=ThinRule(keep_every=4, older_than_s=100), clock=lambda: now[0])
    events = store.append([(1, b'"samples":[],"events":[]', Kind.EVENTS)], created=T0)
    appended = 0
    while not any(e.reason == "evicted_by_cap" for e in store.unreported_ledger(10_000)):
        now[0] += 1.0
        t = now[0] - T0
        samples = [sample(f"d{d}", t + i * 0.1, {f"r{k}": (t * 31 + k) % 977 for k in range(50)})
                   for i in range(10) for d in range(4)]
        batches = encode_body(samples, max_readings=500, offset=T0)
        store.append([(b.readings, b.body, b.kind) for b in batches], created=now[0])
        appended += sum(b.readings for b in batches)
        assert t < 3000, "the cap was never reached"
    entries = store.unreported_ledger(10_000)
    reasons = [e.reason for e in entries]
    assert "thinned" in reasons[:reasons.index("evicted_by_cap")]
    with sqlite3.connect(store.path) as db:
        old_unthinned, recent_thinned = db.execute(
            "SELECT sum(thinned = 0 AND kind = 0 AND created < ?), sum(thinned = 1 AND "
            "created >= ?) FROM batch", (now[0] - 100, now[0] - 100)).fetchone()
    assert (old_unthinned, recent_thinned) == (0, 0)
    stored = store.stats().readings - 1  # the event batch
    assert stored + sum(e.readings or 0 for e in entries) == appended
    assert [b.seq for b in store.read_after(0, 1)] == events  # the event batch survived
    store.close()


async def test_thinned_batches_are_delivered_and_everything_reconciles(
        broker: MosquittoBroker, make_config: Callable[..., AgentConfig],
        fill_then_reconnect: Callable[..., Any],
        docs_of: Callable[[list[Received], str], list[dict[str, Any]]],
        explained: Callable[[list[Received]], set[int]]) -> None:
    """Broker down, the buffer at its cap with keep_every: the oldest batches are thinned
    and still arrive, with their numbers and fewer readings; every number is delivered or
    ledgered; and readings accepted = delivered + given up (thinned, evicted) + still
    stored, exactly."""
    config = make_config(interval_s=0.01)
    config = dataclasses.replace(config, buffer=dataclasses.replace(
        config.buffer, max_bytes=96 * 1024, thin=ThinRule(keep_every=3, older_than_s=0)))
    broker.stop()
    outage: list[int] = []

    def filled(agent: Agent) -> bool:
        assert agent.store is not None
        outage.append(agent.store.last_seq)
        return "thinned" in agent.store.ledger_totals()

    async with Agent(config) as agent:
        messages = await fill_then_reconnect(agent, broker, filled)
    target = outage[-1]  # stored before the broker came back
    assert agent.forwarder is not None and agent.writer is not None
    accepted = agent.writer.accepted_readings
    given_up = sum(_file_ledger(config.buffer.path).values())
    assert accepted == agent.forwarder.acked_readings + given_up + _stored(config.buffer.path)
    assert set(range(1, target + 1)) <= explained(messages)
    delivered = {b["seq"] for d in docs_of(messages, "telemetry") for b in batches_of(d)}
    thinned = {seq for d in docs_of(messages, "ledger") for e in d["entries"]
               if e["reason"] == "thinned" for seq in range(e["first_seq"], e["last_seq"] + 1)}
    assert thinned & delivered, "thinned batches arrive (with fewer readings)"


def _file_ledger(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {r: int(n) for r, n in db.execute(
            "SELECT reason, sum(readings) FROM ledger GROUP BY reason")}


def _stored(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT coalesce(sum(readings), 0) FROM batch").fetchone()[0])
