"""The free-space guard on a real small filesystem: a size-limited tmpfs holds the buffer.

The agent polls the simulated devices while the broker is down, so the backlog grows until
``buffer.min_free_bytes`` is what limits it. Then: the agent keeps taking readings; the
filesystem's free space (``os.statvfs``, as the guard itself measures it, sampled after
every commit of the outage) stays within ``SLACK`` of the guard; once the broker is back
every sequence number is delivered or explained by a free-space entry of the ledger the
platform received, and fresh readings are delivered again.

Mounting needs root (CAP_SYS_ADMIN): elsewhere these tests skip, and the byte-cap tests
(test_ledger, test_buffer) cover the limits, reasons and reconciliation without a mount.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, OverflowPolicy
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.watch import Received, Watcher

FS_BYTES = 8 << 20
"""Size of the dedicated filesystem."""
ROOM = 128 << 10
"""Room the guard leaves the buffer on it: min_free_bytes is the free space minus this."""
INTERVAL_S = 0.01
"""Poll interval of the two simulated devices (35 points): a few thousand readings/s, so
the room fills within a couple of seconds."""
SLACK = 64 << 10
"""How far below min_free_bytes the free space may go: the guard checks at each group
commit, so one commit's pages (its data and the WAL frames of the commit and its
evictions, some 20 KiB at this rate) can take the filesystem below it until the next
check; the rest is margin."""
HIT_WITHIN = 200
"""Commits within which the guard must be hit (about 30 at this rate): a guard that never
acts fails the test instead of polling until the timeout."""
AFTER_HIT = 10
"""Commits the outage goes on for once the guard was hit."""

# The conftest fixtures' types (a test module cannot import from conftest).
DocsOf = Callable[[list[Received], str], list[dict[str, Any]]]
Seqs = Callable[[list[Received]], set[int]]
FillThenReconnect = Callable[..., Awaitable[list[Received]]]


def free_bytes(path: Path) -> int:
    """Free space as the guard sees it: blocks available to an unprivileged writer."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of FS_BYTES mounted for the test, unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the byte-cap tests cover the limits")
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs",
             str(mount_point)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here; the byte-cap tests cover the limits")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); "
                    "the byte-cap tests cover the limits")
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(["umount", str(mount_point)], capture_output=True,
                                   text=True)
        if unmounted.returncode != 0:  # still busy: detach it anyway, and say so
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
            raise AssertionError(f"umount {mount_point}: {unmounted.stderr.strip()}")


@dataclass
class GuardWatch:
    """The ``filled`` predicate of the outage: samples the free space after every commit;
    done ``AFTER_HIT`` commits after the guard first gave something up for ``reason``."""

    path: Path
    guard: int
    reason: str
    lowest: int = FS_BYTES
    hit_commit: int | None = None
    hit_accepted: int = 0
    hit_lost: int = 0
    last_seq: int = 0
    """The newest sequence number when the outage ended."""

    def __call__(self, agent: Agent) -> bool:
        assert agent.writer is not None and agent.store is not None
        self.lowest = min(self.lowest, free_bytes(self.path))
        lost = agent.store.ledger_totals().get(self.reason, 0)
        if self.hit_commit is None:
            if not lost:
                assert agent.writer.commits < HIT_WITHIN, (
                    f"no {self.reason} after {agent.writer.commits} commits, with "
                    f"{free_bytes(self.path)} bytes free and min_free_bytes {self.guard}")
                return False
            self.hit_commit = agent.writer.commits
            self.hit_accepted, self.hit_lost = agent.writer.accepted_readings, lost
        self.last_seq = agent.store.last_seq
        return agent.writer.commits >= self.hit_commit + AFTER_HIT


def on_small_fs(config: AgentConfig, fs: Path, policy: OverflowPolicy) -> tuple[AgentConfig, int]:
    """The configuration with its buffer on ``fs`` and a guard that leaves it ROOM."""
    guard = free_bytes(fs) - ROOM
    buffer = dataclasses.replace(config.buffer, path=fs / "buffer.db", min_free_bytes=guard,
                                 policy=policy)
    return dataclasses.replace(config, buffer=buffer), guard


async def fresh_readings_arrive(agent: Agent, broker: MosquittoBroker,
                                watcher: Callable[..., Watcher], delivered: Seqs) -> None:
    """Readings committed from now on reach the platform (are not all given up)."""
    assert agent.store is not None
    seen = watcher(broker, agent.topics.telemetry)
    after = agent.store.last_seq
    await seen.wait_until_async(lambda ms: max(delivered(ms), default=0) > after,
                                what=f"telemetry with a sequence number above {after}")


async def test_free_space_guard_evicts_the_oldest_and_everything_reconciles(
        small_fs: Path, broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig], docs_of: DocsOf, delivered: Seqs,
        explained: Seqs, fill_then_reconnect: FillThenReconnect) -> None:
    """drop_oldest at the free-space guard: old telemetry is evicted, the agent goes on
    taking readings, the filesystem stays at the guard, and the platform can account for
    every sequence number (evicted_by_free_space), then gets fresh readings again."""
    config, guard = on_small_fs(make_config(interval_s=INTERVAL_S), small_fs,
                                OverflowPolicy.DROP_OLDEST)
    watch = GuardWatch(small_fs, guard, "evicted_by_free_space")
    broker.stop()
    async with Agent(config) as agent:
        assert agent.writer is not None and agent.store is not None
        # Returns once every number up to the outage's end is delivered or explained.
        messages = await fill_then_reconnect(agent, broker, watch)
        # It kept taking readings after the guard was hit, and kept evicting for room.
        assert agent.writer.accepted_readings > watch.hit_accepted
        assert agent.store.ledger_totals()["evicted_by_free_space"] > watch.hit_lost
        assert agent.writer.failed_commits == 0
        await fresh_readings_arrive(agent, broker, watcher, delivered)
    reasons = {e["reason"] for d in docs_of(messages, "ledger") for e in d["entries"]}
    assert reasons == {"evicted_by_free_space"}
    assert set(range(1, watch.last_seq + 1)) <= explained(messages)  # nothing unexplained
    assert guard - watch.lowest <= SLACK, (
        f"free space went {guard - watch.lowest} bytes below min_free_bytes in the outage")
    assert watch.last_seq in delivered(messages)  # the newest were kept: the oldest went


async def test_drop_newest_at_the_free_space_guard_refuses_and_reconciles(
        small_fs: Path, broker: MosquittoBroker, watcher: Callable[..., Watcher],
        make_config: Callable[..., AgentConfig], docs_of: DocsOf, delivered: Seqs,
        explained: Seqs, fill_then_reconnect: FillThenReconnect) -> None:
    """drop_newest at the free-space guard: new readings are refused (numbered and
    ledgered as refused_by_free_space), the stored backlog is kept and delivered, and
    once it is sent fresh readings are stored and delivered again."""
    config, guard = on_small_fs(make_config(interval_s=INTERVAL_S), small_fs,
                                OverflowPolicy.DROP_NEWEST)
    watch = GuardWatch(small_fs, guard, "refused_by_free_space")
    broker.stop()
    async with Agent(config) as agent:
        assert agent.writer is not None and agent.store is not None
        messages = await fill_then_reconnect(agent, broker, watch)
        assert agent.writer.failed_commits == 0
        await fresh_readings_arrive(agent, broker, watcher, delivered)
    reasons = {e["reason"] for d in docs_of(messages, "ledger") for e in d["entries"]}
    assert reasons == {"refused_by_free_space"}
    assert set(range(1, watch.last_seq + 1)) <= explained(messages)
    refused = {s for d in docs_of(messages, "ledger") for e in d["entries"]
               for s in range(e["first_seq"], e["last_seq"] + 1)}
    assert guard - watch.lowest <= SLACK, (
        f"free space went {guard - watch.lowest} bytes below min_free_bytes in the outage")
    assert min(delivered(messages)) == 1 and min(refused) > 1  # the oldest were kept
