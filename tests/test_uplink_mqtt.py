"""MqttConnection against a real Mosquitto with mutual TLS on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
from collections.abc import Callable

import pytest

from edge_agent.config.model import MqttVersion, Security, TlsConfig, UplinkConfig
from edge_agent.devtools.broker import MosquittoBroker
from edge_agent.devtools.pki import Pki
from edge_agent.devtools.watch import Watcher
from edge_agent.uplink.errors import (
    PublishRejected,
    UplinkDisconnected,
    UplinkRefused,
    UplinkTlsError,
    UplinkUnreachable,
)
from edge_agent.uplink.mqtt import MqttConnection

BrokerFactory = Callable[..., MosquittoBroker]
ConfigFactory = Callable[..., UplinkConfig]
WatcherFactory = Callable[..., Watcher]

WILL_TOPIC = "city/gw-test/status"


def connection(config: UplinkConfig) -> MqttConnection:
    return MqttConnection(config, will_topic=WILL_TOPIC, will_payload=b"offline")


@pytest.mark.parametrize("version", [MqttVersion.V5, MqttVersion.V311])
async def test_publish_completes_on_puback_and_reaches_subscriber(
    broker: MosquittoBroker,
    uplink_config: ConfigFactory,
    watcher: WatcherFactory,
    version: MqttVersion,
) -> None:
    """A QoS 1 publish over mutual TLS reaches a subscriber and its future completes."""
    seen = watcher(broker, "city/gw-test/telemetry")
    async with connection(uplink_config(broker, mqtt_version=version)) as conn:
        await conn.publish("city/gw-test/telemetry", b'{"seq": 1}')
        messages = await seen.wait_for_async(1)
    assert [(m.topic, m.payload, m.qos) for m in messages] == [
        ("city/gw-test/telemetry", b'{"seq": 1}', 1)
    ]


async def test_many_publishes_in_flight_complete_in_ack_order(
    broker: MosquittoBroker, uplink_config: ConfigFactory, watcher: WatcherFactory
) -> None:
    """A full window of publishes is in flight at once; futures complete in publish order."""
    seen = watcher(broker, "city/gw-test/telemetry")
    config = uplink_config(broker, max_inflight=16)
    completed: list[int] = []

    def record(seq: int, _: asyncio.Future[None]) -> None:
        completed.append(seq)

    async with connection(config) as conn:
        futures = []
        for seq in range(config.max_inflight):
            future = conn.publish("city/gw-test/telemetry", str(seq).encode())
            future.add_done_callback(functools.partial(record, seq))
            futures.append(future)
        assert conn.inflight == config.max_inflight
        with pytest.raises(RuntimeError, match="publish window full"):
            conn.publish("city/gw-test/telemetry", b"one too many")
        await asyncio.gather(*futures)
        assert conn.inflight == 0
    assert completed == list(range(config.max_inflight))
    received = await seen.wait_for_async(config.max_inflight)
    assert [m.payload for m in received] == [str(i).encode() for i in range(16)]


async def test_retained_will_is_published_when_the_connection_dies(
    broker: MosquittoBroker, uplink_config: ConfigFactory, watcher: WatcherFactory
) -> None:
    """Dropping the link without DISCONNECT makes the broker publish the retained will."""
    live = watcher(broker, WILL_TOPIC)
    async with connection(uplink_config(broker)) as conn:
        conn.abort()
        with pytest.raises(UplinkDisconnected):
            await conn.wait_closed()
    assert [m.payload for m in await live.wait_for_async(1)] == [b"offline"]
    late = watcher(broker, WILL_TOPIC)
    [retained] = await late.wait_for_async(1)
    assert (retained.payload, retained.retain) == (b"offline", True)


async def test_clean_close_does_not_publish_the_will(
    broker: MosquittoBroker, uplink_config: ConfigFactory, watcher: WatcherFactory
) -> None:
    """Leaving ``async with`` sends DISCONNECT: wait_closed returns and no will is published."""
    seen = watcher(broker, "city/#")
    async with connection(uplink_config(broker)) as conn:
        pass
    await conn.wait_closed()
    # Mosquitto is single-threaded: it handled our DISCONNECT long before it finished the
    # second client's TLS handshake, so a will would arrive before the marker.
    async with connection(uplink_config(broker)) as other:
        await other.publish("city/marker", b"after")
    assert [m.topic for m in await seen.wait_for_async(1)] == ["city/marker"]


async def test_untrusted_broker_certificate_raises_tls_error(
    broker_factory: BrokerFactory, uplink_config: ConfigFactory, pki: Pki
) -> None:
    """A broker certificate from another CA fails with UplinkTlsError naming the ca_file."""
    broker = broker_factory(cert_file=pki.other_server_cert, key_file=pki.other_server_key)
    with pytest.raises(UplinkTlsError) as caught:
        async with connection(uplink_config(broker)):
            pass
    message = str(caught.value)
    assert f"broker certificate for 127.0.0.1:{broker.tls_port} not trusted" in message
    assert f"ca_file {pki.ca_file}" in message
    assert "unable to get local issuer certificate" in message


async def test_server_name_is_the_name_checked_in_the_broker_certificate(
    broker: MosquittoBroker, uplink_config: ConfigFactory, pki: Pki
) -> None:
    """tls.server_name replaces uplink.host as the name the broker certificate must carry."""
    tls = TlsConfig(
        ca_file=pki.ca_file,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        server_name="broker.example.invalid",
    )
    with pytest.raises(UplinkTlsError, match=r"does not match.*broker\.example\.invalid"):
        async with connection(uplink_config(broker, tls=tls)):
            pass
    named = dataclasses.replace(tls, server_name="localhost")
    async with connection(uplink_config(broker, tls=named)) as conn:
        await conn.publish("city/gw-test/telemetry", b"via localhost")


async def test_client_certificate_not_accepted_is_refused(
    broker: MosquittoBroker, uplink_config: ConfigFactory, pki: Pki
) -> None:
    """A client certificate the broker does not trust fails with UplinkRefused saying so."""
    tls = TlsConfig(
        ca_file=pki.ca_file, cert_file=pki.other_client_cert, key_file=pki.other_client_key
    )
    with pytest.raises(UplinkRefused) as caught:
        async with connection(uplink_config(broker, tls=tls)):
            pass
    assert "rejected the connection during the TLS handshake" in str(caught.value)
    assert "client certificate missing or not accepted?" in str(caught.value)


async def test_broker_stop_fails_pending_publishes_and_closes(
    broker: MosquittoBroker, uplink_config: ConfigFactory
) -> None:
    """When the broker goes away, pending publishes and wait_closed fail with UplinkDisconnected."""
    async with connection(uplink_config(broker)) as conn:
        futures = [conn.publish("city/gw-test/telemetry", b"x") for _ in range(5)]
        # Blocking on purpose: the loop gets no chance to send before the broker is gone.
        broker.stop()
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(result, UplinkDisconnected) for result in results), results
        with pytest.raises(UplinkDisconnected, match=f"127.0.0.1:{broker.tls_port} lost"):
            await conn.wait_closed()
        late = conn.publish("city/gw-test/telemetry", b"late")
        with pytest.raises(UplinkDisconnected):
            await late


async def test_unresponsive_broker_is_detected_by_keepalive(
    broker: MosquittoBroker, uplink_config: ConfigFactory
) -> None:
    """With no traffic, a broker that stops answering PINGREQ ends the connection."""
    async with connection(uplink_config(broker, keepalive_s=1.0)) as conn:
        broker.pause()
        try:
            async with asyncio.timeout(30):
                with pytest.raises(UplinkDisconnected):
                    await conn.wait_closed()
        finally:
            broker.resume()


async def test_broker_restarted_on_the_same_port_accepts_a_new_connection(
    broker: MosquittoBroker, uplink_config: ConfigFactory
) -> None:
    """A broker stopped and started again listens on the same port for a fresh connection."""
    config = uplink_config(broker)
    broker.stop()
    with pytest.raises(UplinkUnreachable):
        async with connection(config):
            pass
    broker.start()
    async with connection(config) as conn:
        await conn.publish("city/gw-test/telemetry", b"back")


async def test_closed_port_raises_unreachable(
    broker: MosquittoBroker, uplink_config: ConfigFactory
) -> None:
    """Connecting to a port nobody listens on fails with UplinkUnreachable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UplinkUnreachable, match=f"cannot reach broker 127.0.0.1:{port}"):
        async with connection(uplink_config(broker, port=port)):
            pass


async def test_publish_forbidden_by_acl_is_rejected_with_0x87(
    broker_factory: BrokerFactory, uplink_config: ConfigFactory, pki: Pki
) -> None:
    """Under MQTT 5 a publish the ACL forbids fails with PublishRejected 0x87; the link stays."""
    acl = f"user {pki.client_common_name}\ntopic readwrite city/#\n"
    broker = broker_factory(acl=acl)
    async with connection(uplink_config(broker)) as conn:
        with pytest.raises(PublishRejected) as caught:
            await conn.publish("forbidden/telemetry", b"x")
        assert caught.value.reason_code == 0x87
        assert "Not authorized" in str(caught.value)
        await conn.publish("city/gw-test/telemetry", b"still connected")


async def test_plaintext_works_and_warns(
    broker: MosquittoBroker,
    uplink_config: ConfigFactory,
    watcher: WatcherFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """security: plaintext connects without TLS and logs a warning saying so."""
    seen = watcher(broker, "city/#", plaintext=True)
    caplog.set_level(logging.WARNING, logger="edge_agent.uplink.mqtt")
    async with connection(uplink_config(broker, security=Security.PLAINTEXT)) as conn:
        await conn.publish("city/gw-test/telemetry", b"clear")
    assert [m.payload for m in await seen.wait_for_async(1)] == [b"clear"]
    assert "uplink is unencrypted (security: plaintext)" in caplog.messages


async def test_subscribe_delivers_messages_to_the_iterator(
    broker: MosquittoBroker, uplink_config: ConfigFactory
) -> None:
    """A subscription's messages come out of messages(), which ends when the link closes."""
    async with connection(uplink_config(broker)) as conn:
        assert await conn.subscribe("city/gw-test/commands/#", qos=1) == 1
        await conn.publish("city/gw-test/commands/reboot", b"now")
        received = []
        async for message in conn.messages():
            received.append(message)
            break
    assert [(m.topic, m.payload) for m in received] == [("city/gw-test/commands/reboot", b"now")]


async def test_connack_limits_are_read_and_a_too_large_packet_is_not_sent(
    broker_factory: BrokerFactory, uplink_config: ConfigFactory, watcher: WatcherFactory
) -> None:
    """The broker's MQTT 5 CONNACK limits are known once connected. A payload above its
    Maximum Packet Size fails with reason 0x95 without being sent (MQTT-3.2.2-16) and the
    connection stays up; one that fits is delivered; retain is dropped when the broker
    has no retained messages (a retained publish would be a protocol error)."""
    limited = broker_factory(settings={"max_packet_size": "1000", "max_inflight_messages": "3",
                                       "retain_available": "false"})
    seen = watcher(limited, "city/gw-test/#")
    config = uplink_config(limited)
    # (a retained will is refused by such a broker: the forwarder then connects with
    # will_retain=False, tested in test_backlog)
    async with MqttConnection(config, will_topic=WILL_TOPIC, will_payload=b"offline",
                              will_retain=False) as conn:
        assert (conn.limits.receive_maximum, conn.limits.maximum_packet_size,
                conn.limits.retain_available) == (3, 1000, False)
        largest = conn.limits.max_payload("city/gw-test/telemetry")
        assert largest is not None and largest < 1000
        with pytest.raises(PublishRejected) as caught:
            await conn.publish("city/gw-test/telemetry", b"x" * (largest + 1))
        assert caught.value.reason_code == 0x95
        await conn.publish("city/gw-test/telemetry", b"y" * largest)
        await conn.publish("city/gw-test/status", b"online", retain=True)
        messages = await seen.wait_for_async(2)
        assert conn.is_connected
    assert [(m.payload[:1], len(m.payload)) for m in messages] == [(b"y", largest),
                                                                   (b"o", 6)]


async def test_a_broker_offering_qos_0_only_is_refused(
    broker_factory: BrokerFactory, uplink_config: ConfigFactory
) -> None:
    """At-least-once delivery needs QoS 1: a broker limited to QoS 0 refuses the QoS 1
    will (0x9B), and the error says what is wrong (the forwarder keeps buffering and
    retrying with backoff)."""
    qos0 = broker_factory(settings={"max_qos": "0"})
    with pytest.raises(UplinkRefused) as caught:
        async with connection(uplink_config(qos0)):
            pass
    assert caught.value.reason_code == 0x9B
    assert "accepts QoS 0 only" in str(caught.value)
