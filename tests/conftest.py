"""Shared fixtures: a throwaway PKI, real Mosquitto brokers on loopback, uplink configs, watchers.

    def test_x(broker, uplink_config, watcher):
        seen = watcher(broker, "city/#")             # subscribed (SUBACK received) on return
        config = uplink_config(broker)              # mutual TLS to broker.tls_port
        async with MqttConnection(config, will_topic=..., will_payload=...) as conn: ...
        await seen.wait_for_async(1)                # bounded wait, loop keeps running

Variants: ``broker_factory(acl=..., cert_file=..., plaintext=False, settings={...})`` for
another broker, ``uplink_config(broker, security=Security.PLAINTEXT)``,
``uplink_config(broker, tls=...)``.

What the platform received from an agent made by ``make_config`` (gateway
``city/town/gw-e2e``): ``docs_of(messages, "ledger")``, ``delivered(messages)`` (sequence
numbers), ``explained(messages)`` (delivered or accounted for by a ledger entry), and
``await fill_then_reconnect(agent, broker, filled)`` for an outage that ends.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from edge_agent.config import AgentConfig, parse_config
from edge_agent.config.model import Security, TlsConfig, UplinkConfig
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import Pki, make_pki
from edge_agent.devtools.simulator import SimulatedSite
from edge_agent.devtools.watch import Received, Watcher
from edge_agent.telemetry import batches_of

if TYPE_CHECKING:  # only annotations: conftest does not import the whole agent
    from edge_agent.agent import Agent

_ids = itertools.count(1)


# Tests annotate these fixtures as Callable[..., MosquittoBroker] (and so on): with
# --import-mode=importlib a test module cannot import from conftest.
BrokerFactory = Callable[..., MosquittoBroker]
UplinkConfigFactory = Callable[..., UplinkConfig]
WatcherFactory = Callable[..., Watcher]
FillThenReconnect = Callable[..., Awaitable[list[Received]]]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, broker and client certificates (plus an unrelated CA), made once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker_factory(pki: Pki, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers (mutual TLS; plaintext listener by default); all stopped at teardown."""
    started: list[MosquittoBroker] = []

    def start(
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        plaintext: bool = True,
        acl: str | None = None,
        tls_version: str = "tlsv1.2",
        settings: dict[str, str] | None = None,
    ) -> MosquittoBroker:
        broker = MosquittoBroker(
            tmp_path / f"broker-{len(started) + 1}",
            ca_file=pki.ca_file,
            cert_file=cert_file or pki.server_cert,
            key_file=key_file or pki.server_key,
            plaintext=plaintext,
            acl=acl,
            tls_version=tls_version,
            settings=settings,
        )
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    """A running Mosquitto with a mutual-TLS listener and a plaintext one."""
    return broker_factory()


@pytest.fixture
def uplink_config(pki: Pki) -> UplinkConfigFactory:
    """Build an UplinkConfig for a broker: mutual TLS with the client certificate by default."""

    def build(broker: MosquittoBroker, **overrides: Any) -> UplinkConfig:
        security = overrides.pop("security", Security.TLS)
        plaintext = security == Security.PLAINTEXT
        port = broker.plain_port if plaintext else broker.tls_port
        assert port is not None, "this broker has no plaintext listener"
        values: dict[str, Any] = {
            "host": broker.host,
            "port": port,
            "security": security,
            "tls": None
            if plaintext
            else TlsConfig(ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key),
            "topic_prefix": "city",
            "client_id": f"edge-agent-test-{next(_ids)}",
            "connect_timeout_s": 10.0,
        }
        values.update(overrides)
        return UplinkConfig(**values)

    return build


@pytest.fixture
def watcher(pki: Pki) -> Iterator[WatcherFactory]:
    """Subscribe a platform-side watcher to a broker; subscribed on return, stopped at teardown."""
    running: list[Watcher] = []

    def start(broker: MosquittoBroker, topic: str = "#", *, plaintext: bool = False) -> Watcher:
        if plaintext:
            assert broker.plain_port is not None
            w = Watcher(host=broker.host, port=broker.plain_port, topic=topic)
        else:
            w = Watcher(
                host=broker.host,
                port=broker.tls_port,
                topic=topic,
                ca_file=pki.ca_file,
                cert_file=pki.client_cert,
                key_file=pki.client_key,
            )
        w.start()
        running.append(w)
        return w

    yield start
    for w in running:
        w.stop()


def agent_config_text(*, tmp: Path, pki: Pki, broker: MosquittoBroker, ports: list[int],
                interval_s: float = 0.05, port: int | None = None) -> str:
    """An agent with two devices: a meter with mixed encodings and a station of counters."""
    return f"""\
gateway: {{id: gw-e2e, site: town}}
log_level: DEBUG
uplink:
  host: 127.0.0.1
  port: {port or broker.tls_port}
  topic_prefix: city
  reconnect_initial_s: 0.05
  reconnect_max_s: 0.2
  shutdown_grace_s: 5
  tls: {{ca_file: {pki.ca_file}, cert_file: {pki.client_cert}, key_file: {pki.client_key}}}
buffer:
  path: {tmp / "buffer.db"}
  commit_interval_s: 0.05
  max_message_readings: 20
devices:
  - name: meter
    driver: modbus_tcp
    connection: {{host: 127.0.0.1, port: {ports[0]}, timeout_s: 1.0}}
    interval_s: {interval_s}
    points:
      - {{name: voltage, table: holding, address: 0, type: float32}}
      - {{name: power, table: holding, address: 2, type: int32, order: CDAB, scale: 0.1}}
      - {{name: temp, table: holding, address: 4, type: int16, scale: 0.5, offset: -10}}
      - {{name: energy, table: input, address: 0, type: uint32, order: DCBA}}
      - {{name: relay, table: coil, address: 3, type: bool}}
  - name: station
    driver: modbus_tcp
    connection: {{host: 127.0.0.1, port: {ports[1]}, timeout_s: 1.0}}
    interval_s: {interval_s}
    points:
      - {{name: counter, table: holding, address: 0, type: uint16, repeat: 30}}
"""


@pytest.fixture
async def site() -> AsyncIterator[SimulatedSite]:
    """Two simulated Modbus TCP devices on 127.0.0.1 (64 registers and bits each)."""
    async with SimulatedSite(devices=2, registers=64) as running:
        yield running


@pytest.fixture
def make_config(tmp_path: Path, pki: Pki, broker: MosquittoBroker, site: SimulatedSite
                ) -> Callable[..., AgentConfig]:
    """Agent configuration for ``site`` and ``broker`` (written to tmp_path/agent.yaml);
    keyword arguments go to :func:`agent_config_text`."""

    def make(**kwargs: Any) -> AgentConfig:
        text = agent_config_text(tmp=tmp_path, pki=pki, broker=broker, ports=site.ports, **kwargs)
        (tmp_path / "agent.yaml").write_text(text)
        return parse_config(text, source=str(tmp_path / "agent.yaml"), base_dir=tmp_path)

    return make


# What the platform received: helpers shared by the ledger and free-space tests, handed out
# as fixtures (a test module cannot import from conftest).

AGENT_BASE = "city/town/gw-e2e"
"""Topic base of the agent :func:`agent_config_text` describes."""


def _docs_of(messages: list[Received], leaf: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.payload) for m in messages if m.topic == f"{AGENT_BASE}/{leaf}"]


def _delivered(messages: list[Received]) -> set[int]:
    return {b["seq"] for d in _docs_of(messages, "telemetry") for b in batches_of(d)}


def _explained(messages: list[Received]) -> set[int]:
    seen = _delivered(messages)
    for ledger in _docs_of(messages, "ledger"):
        for entry in ledger["entries"]:
            if entry["first_seq"] is not None:
                seen |= set(range(entry["first_seq"], entry["last_seq"] + 1))
    return seen


@pytest.fixture
def docs_of() -> Callable[[list[Received], str], list[dict[str, Any]]]:
    """``docs_of(messages, "ledger")``: the decoded messages of one of the agent's topics."""
    return _docs_of


@pytest.fixture
def delivered() -> Callable[[list[Received]], set[int]]:
    """``delivered(messages)``: the sequence numbers of the telemetry the platform received."""
    return _delivered


@pytest.fixture
def explained() -> Callable[[list[Received]], set[int]]:
    """``explained(messages)``: the sequence numbers the platform received or that a
    ledger entry it received accounts for."""
    return _explained


@pytest.fixture
def fill_then_reconnect(watcher: WatcherFactory) -> FillThenReconnect:
    """``await fill_then_reconnect(agent, broker, filled)``: with the broker down, commit
    until ``filled(agent)`` (checked after every commit); then bring the broker back and
    wait until every sequence number so far is delivered or explained by the ledger.
    Returns everything the platform received on the agent's topics."""

    async def run(agent: Agent, broker: MosquittoBroker,
                  filled: Callable[[Agent], bool]) -> list[Received]:
        assert agent.writer is not None and agent.store is not None
        while not filled(agent):
            await agent.writer.wait_for_commits(agent.writer.commits + 1)
        broker.start()
        seen = watcher(broker, f"{AGENT_BASE}/#")
        target = agent.store.last_seq
        return await seen.wait_until_async(
            lambda ms: set(range(1, target + 1)) <= _explained(ms),
            what=f"sequence numbers 1..{target} delivered or explained")

    return run
