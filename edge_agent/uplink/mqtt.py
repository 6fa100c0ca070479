"""One MQTT connection to the platform broker, driven by the asyncio loop (paho-mqtt 2.x).

paho does the protocol; this module does the I/O scheduling and the error translation:

* the blocking part (DNS, TCP connect, TLS handshake, sending CONNECT) runs once in an
  executor thread; every paho callback is installed only after that, so from then on paho
  is touched from the event loop thread alone;
* the socket is then watched with ``add_reader``/``add_writer`` and a ``loop_misc`` timer
  keeps the keepalive going;
* paho, ssl and socket errors come out as :mod:`edge_agent.uplink.errors`.

There is no reconnect here: an instance lives for one connection, and the forwarder opens a
new one (with its own backoff) when :meth:`MqttConnection.wait_closed` says the link died.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config.model import MqttVersion, Security, UplinkConfig
from edge_agent.uplink.errors import (
    PublishRejected,
    UplinkDisconnected,
    UplinkError,
    UplinkRefused,
    UplinkTlsError,
    UplinkUnreachable,
)

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

__all__ = ["RETAIN_NOT_SUPPORTED", "BrokerLimits", "InboundMessage", "MqttConnection"]

RETAIN_NOT_SUPPORTED = 0x9A
"""CONNACK reason code of a broker without retained messages refusing a retained will."""

_log = logging.getLogger(__name__)
_paho_log = logging.getLogger(f"{__name__}.paho")

_INBOX_MAX_MESSAGES = 1000
_MISC_INTERVAL_S = 1.0
_HANDSHAKE_HINT = "client certificate missing or not accepted?"
# OpenSSL reason names of the alerts a broker sends when it refuses our client certificate.
_CLIENT_CERT_ALERTS = (
    "HANDSHAKE_FAILURE",
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "UNSUPPORTED_CERTIFICATE",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_UNKNOWN",
    "ACCESS_DENIED",
    "DECRYPT_ERROR",
)
_CONNACK_HINTS = {
    0x9B: "; the broker accepts QoS 0 only, the agent needs QoS 1 for at-least-once delivery",
    0x87: "; check the broker's ACL for this client",
}
_HOSTNAME_MISMATCH_CODES = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received on a subscription."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """What the broker allows this client, from the MQTT 5 CONNACK properties (MQTT 5.0
    section 3.2.2.3). Under MQTT 3.1.1, or when the broker leaves one out, the protocol's
    defaults apply."""

    receive_maximum: int = 65535
    """QoS 1 publishes the client may have unacknowledged at once."""
    maximum_packet_size: int | None = None
    """Largest packet the broker accepts, in bytes (``None``: no limit but the protocol's)."""
    retain_available: bool = True

    @classmethod
    def from_connack(cls, properties: Properties | None) -> BrokerLimits:
        if properties is None:
            return cls()
        return cls(
            receive_maximum=int(getattr(properties, "ReceiveMaximum", 65535)),
            maximum_packet_size=getattr(properties, "MaximumPacketSize", None),
            retain_available=bool(getattr(properties, "RetainAvailable", 1)),
        )

    def max_payload(self, topic: str) -> int | None:
        """The largest QoS 1 PUBLISH payload on ``topic`` within ``maximum_packet_size``:
        the packet adds a fixed header (at most 5 bytes), the topic (2 + its length), the
        packet identifier (2) and an empty property block (1)."""
        if self.maximum_packet_size is None:
            return None
        return self.maximum_packet_size - (5 + 2 + len(topic.encode()) + 2 + 1)


class _UplinkSslContext(ssl.SSLContext):
    """Client context that checks a configured server name and tells TCP from TLS failures.

    paho wraps its TCP socket with ``server_hostname=<the host it connected to>``; overriding
    ``wrap_socket`` is the one public seam to check another name (``tls.server_name``), and
    being called at all proves the TCP connection was established.
    """

    server_name: str | None
    tcp_connected: bool
    wrapped: ssl.SSLSocket | None

    def wrap_socket(
        self,
        sock: Any,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        self.tcp_connected = True
        wrapped = super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )
        self.wrapped = wrapped
        return wrapped


def _make_ssl_context(config: UplinkConfig) -> _UplinkSslContext:
    tls = config.tls
    if tls is None:
        raise UplinkTlsError("uplink.security is tls but uplink.tls is not set")
    # Same settings as ssl.create_default_context(cafile=...) (PROTOCOL_TLS_CLIENT verifies
    # the chain and the host name), built on our subclass.
    context = _UplinkSslContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = tls.server_name
    context.tcp_connected = False
    context.wrapped = None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkTlsError(f"cannot load uplink.tls.ca_file {tls.ca_file}: {exc}") from exc
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkTlsError(
            f"cannot load the client certificate uplink.tls.cert_file {tls.cert_file} "
            f"with uplink.tls.key_file {tls.key_file}: {exc}"
        ) from exc
    return context


class MqttConnection:
    """One MQTT connection to the broker: ``async with`` connects, leaving disconnects.

    Publishes return a future completed by the broker's acknowledgement. When the link dies,
    pending publishes and :meth:`wait_closed` fail with :class:`UplinkDisconnected`.
    Not reusable: open a new instance to reconnect.
    """

    def __init__(self, config: UplinkConfig, *, will_topic: str, will_payload: bytes,
                 will_retain: bool = True) -> None:
        self._config = config
        self._will_topic = will_topic
        self._will_payload = will_payload
        self._will_retain = will_retain
        self._endpoint = f"{config.host}:{config.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._ssl_context: _UplinkSslContext | None = None
        self._connecting: asyncio.Future[MQTTErrorCode] | None = None
        self._fd = -1
        self._writing = False
        self._misc_handle: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._pending_subs: dict[int, asyncio.Future[int]] = {}
        self._inbox: deque[InboundMessage] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._entered = False
        self._connected = False
        self._lost = False
        self._closing = False
        self._finalized = False
        self._last_error: str | None = None
        self._disconnect_detail: str | None = None
        self.dropped_messages = 0
        """Inbound messages dropped because nobody consumed them (the inbox is bounded)."""
        self.limits = BrokerLimits()
        """The broker's limits, known once connected (MQTT 5 CONNACK properties)."""

    # -- public API ---------------------------------------------------------------------

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the connection ends: ``None`` if we closed it, else UplinkDisconnected."""
        if self._closed is None:
            raise RuntimeError("MqttConnection is not connected yet (use 'async with')")
        return self._closed

    @property
    def is_connected(self) -> bool:
        return self._connected and not self._lost

    @property
    def inflight(self) -> int:
        """Publishes sent and not yet acknowledged."""
        return len(self._pending)

    async def wait_closed(self) -> None:
        """Return when we closed the connection; raise UplinkDisconnected if it was lost."""
        await asyncio.shield(self.closed)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Send a message now; the future completes on the broker's PUBACK (QoS 1).

        It fails with :class:`PublishRejected` for an MQTT 5 failure reason code (0x95,
        without sending, when the payload exceeds the broker's maximum packet size), or with
        :class:`UplinkDisconnected` if the connection ends first. At most
        ``config.max_inflight`` publishes may be pending: beyond that this raises
        RuntimeError rather than queueing silently (the caller owns the window, and keeps it
        within the broker's ``limits.receive_maximum``). ``retain`` is ignored when the
        broker has no retained messages.
        """
        loop, client = self._require_connected()
        future: asyncio.Future[None] = loop.create_future()
        if self._lost:
            _fail_quietly(future, self._disconnected_error())
            return future
        max_payload = self.limits.max_payload(topic)
        if max_payload is not None and len(payload) > max_payload:
            # MQTT 5.0 [MQTT-3.2.2-16]: a packet too large for the broker is discarded
            # unsent, as if it had been sent: the caller accounts for it.
            _fail_quietly(future, PublishRejected(
                0x95, f"packet too large: {len(payload)} bytes of payload, the broker's "
                f"maximum packet size ({self.limits.maximum_packet_size}) allows {max_payload}"))
            return future
        retain = retain and self.limits.retain_available
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise RuntimeError(self._window_full_message())
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            _fail_quietly(
                future,
                UplinkDisconnected(
                    f"cannot publish to {self._endpoint}: {paho.error_string(info.rc)}"
                ),
            )
            return future
        self._pending[info.mid] = future
        return future

    async def subscribe(self, topic: str, *, qos: int = 1) -> int:
        """Subscribe and wait for the SUBACK; return the granted QoS.

        Received messages come out of :meth:`messages`.
        """
        loop, client = self._require_connected()
        if self._lost:
            raise self._disconnected_error()
        rc, mid = client.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise UplinkDisconnected(
                f"cannot subscribe on {self._endpoint}: {paho.error_string(rc)}"
            )
        future: asyncio.Future[int] = loop.create_future()
        future.add_done_callback(_mark_retrieved)
        self._pending_subs[mid] = future
        try:
            granted = await future
        finally:
            self._pending_subs.pop(mid, None)
        return granted

    async def messages(self) -> AsyncIterator[InboundMessage]:
        """Yield received messages until the connection closes (raise if it was lost).

        One consumer at a time. The inbox is bounded; overflow is counted in
        :attr:`dropped_messages`.
        """
        loop, _ = self._require_connected()
        while True:
            while self._inbox:
                yield self._inbox.popleft()
            if self._finalized:
                await self.wait_closed()
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._inbox_waiter = waiter
            try:
                await waiter
            finally:
                self._inbox_waiter = None

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT: the broker publishes the will."""
        if self._client is None or self._lost:
            return
        self._teardown()
        self._connection_lost("connection aborted by the agent")

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("MqttConnection is single-use: create a new one to reconnect")
        self._entered = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        self._closed.add_done_callback(_mark_retrieved)
        try:
            await self._connect()
        except BaseException as exc:
            self._teardown()
            self._lost = True
            self._finalize(exc if isinstance(exc, UplinkError) else None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, closed = self._client, self._closed
        try:
            if client is not None and closed is not None and not self._lost:
                self._closing = True
                if client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    # DISCONNECT is written from the loop; paho then closes the socket.
                    await asyncio.wait({closed}, timeout=self._config.connect_timeout_s)
        finally:
            if not self._finalized:
                self._closing = True
                self._teardown()
                self._lost = True
                self._finalize(None)

    # -- connecting ---------------------------------------------------------------------

    async def _connect(self) -> None:
        config = self._config
        loop = asyncio.get_running_loop()
        client = self._make_client()
        self._client = client
        if config.security == Security.PLAINTEXT:
            _log.warning("uplink is unencrypted (security: plaintext)")
            self._ssl_context = None
        else:
            self._ssl_context = _make_ssl_context(config)
            client.tls_set_context(self._ssl_context)

        connecting = loop.run_in_executor(None, self._connect_blocking, client)
        self._connecting = connecting
        try:
            rc = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # The thread cannot be interrupted (and its socket must not be closed under it):
            # close whatever it opened once it is done.
            def discard(done: asyncio.Future[MQTTErrorCode]) -> None:
                _mark_retrieved(done)
                self._close_raw_socket()

            connecting.add_done_callback(discard)
            raise
        except (OSError, ValueError) as exc:
            self._close_raw_socket()
            raise self._translate_connect_error(exc) from exc

        sock = client.socket()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
            self._close_raw_socket()
            raise self._pre_connack_error(paho.error_string(rc))
        self._install(client, sock)
        assert self._connack is not None
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                await asyncio.shield(self._connack)
        except TimeoutError:
            raise UplinkUnreachable(
                f"no CONNACK from broker {self._endpoint} within {config.connect_timeout_s:g} s"
            ) from None
        self._connected = True
        _log.info(
            "uplink connected to %s (%s, MQTT %s)",
            self._endpoint,
            config.security.value,
            config.mqtt_version.value,
        )

    def _make_client(self) -> paho.Client:
        config = self._config
        v5 = config.mqtt_version == MqttVersion.V5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=None if v5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        # paho's own error logs repeat what our errors say; keep them at DEBUG.
        client.on_log = self._on_log
        client.connect_timeout = config.connect_timeout_s
        # The window is the caller's; paho never queues beyond it (QUEUE_SIZE instead).
        client.max_inflight_messages_set(config.max_inflight)
        client.max_queued_messages_set(config.max_inflight)
        client.will_set(self._will_topic, self._will_payload, qos=1, retain=self._will_retain)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        return client

    def _connect_blocking(self, client: paho.Client) -> MQTTErrorCode:
        """TCP connect, TLS handshake, CONNECT written: runs in an executor thread."""
        config = self._config
        keepalive = math.ceil(config.keepalive_s)
        if config.mqtt_version == MqttVersion.V5:
            return client.connect(config.host, config.port, keepalive, clean_start=True)
        return client.connect(config.host, config.port, keepalive)

    def _translate_connect_error(self, exc: BaseException) -> UplinkError:
        endpoint = self._endpoint
        context = self._ssl_context
        if isinstance(exc, ssl.SSLCertVerificationError):
            assert self._config.tls is not None
            ca_file = self._config.tls.ca_file
            reason = exc.verify_message or str(exc)
            if exc.verify_code in _HOSTNAME_MISMATCH_CODES:
                server_name = self._config.tls.server_name
                hint = (
                    f"uplink.tls.server_name is {server_name!r}"
                    if server_name is not None
                    else "set uplink.tls.server_name if the broker's name differs from uplink.host"
                )
                return UplinkTlsError(
                    f"broker certificate for {endpoint} does not match the expected name: "
                    f"{reason} ({hint})"
                )
            return UplinkTlsError(
                f"broker certificate for {endpoint} not trusted by ca_file {ca_file}: "
                f"certificate verify failed: {reason}"
            )
        if context is not None and context.tcp_connected:
            if isinstance(exc, TimeoutError):
                return UplinkUnreachable(
                    f"TLS handshake with broker {endpoint} timed out after "
                    f"{self._config.connect_timeout_s:g} s"
                )
            if _is_peer_rejection(exc):
                return UplinkRefused(
                    f"broker {endpoint} rejected the connection during the TLS handshake "
                    f"({_HANDSHAKE_HINT}): {_describe(exc)}"
                )
            return UplinkTlsError(f"TLS handshake with broker {endpoint} failed: {_describe(exc)}")
        if isinstance(exc, OSError):
            return UplinkUnreachable(f"cannot reach broker {endpoint}: {_describe(exc)}")
        return UplinkError(f"cannot connect to broker {endpoint}: {exc}")

    def _pre_connack_error(self, detail: str | None) -> UplinkError:
        """The error for a connection that ended after the handshake, before any CONNACK."""
        detail = detail or "connection closed by the broker"
        if self._ssl_context is not None:
            # TLS 1.3 clients finish the handshake before the broker checks their
            # certificate, so its refusal only shows up as an alert (or EOF) on first read.
            return UplinkRefused(
                f"broker {self._endpoint} rejected the connection during the TLS handshake "
                f"({_HANDSHAKE_HINT}): {detail}"
            )
        return UplinkDisconnected(
            f"broker {self._endpoint} closed the connection before CONNACK: {detail}"
        )

    # -- driving paho from the loop -------------------------------------------------------

    def _install(self, client: paho.Client, sock: SocketLike) -> None:
        loop = self._require_loop()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._fd = sock.fileno()
        loop.add_reader(self._fd, self._on_readable)
        if client.want_write():
            # CONNECT only partly written by the thread (paho already thinks it registered).
            self._add_writer()
        self._schedule_misc()

    def _on_readable(self) -> None:
        client = self._client
        assert client is not None
        try:
            while True:
                rc = client.loop_read()
                sock = client.socket()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
                    break
                # Decrypted bytes already inside the SSL object do not make the fd readable.
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                    break
        except Exception as exc:  # paho or a socket error: the link is gone
            self._teardown()
            self._connection_lost(f"read failed: {_describe(exc)}")

    def _on_writable(self) -> None:
        client = self._client
        assert client is not None
        try:
            client.loop_write()
        except Exception as exc:
            self._teardown()
            self._connection_lost(f"write failed: {_describe(exc)}")

    def _on_misc(self) -> None:
        self._misc_handle = None
        client = self._client
        if client is None or self._lost:
            return
        try:
            client.loop_misc()
        except Exception as exc:
            self._teardown()
            self._connection_lost(f"keepalive failed: {_describe(exc)}")
            return
        if not self._lost:
            self._schedule_misc()

    def _schedule_misc(self) -> None:
        interval = min(_MISC_INTERVAL_S, max(self._config.keepalive_s / 2, 0.1))
        self._misc_handle = self._require_loop().call_later(interval, self._on_misc)

    def _add_writer(self) -> None:
        if not self._writing and self._fd >= 0:
            self._require_loop().add_writer(self._fd, self._on_writable)
            self._writing = True

    def _remove_writer(self) -> None:
        if self._writing:
            self._require_loop().remove_writer(self._fd)
            self._writing = False

    def _unregister_io(self) -> None:
        # Must run before the socket is closed: its fd number may be reused right after.
        if self._fd >= 0:
            self._remove_writer()
            self._require_loop().remove_reader(self._fd)
            self._fd = -1
        if self._misc_handle is not None:
            self._misc_handle.cancel()
            self._misc_handle = None

    def _teardown(self) -> None:
        """Stop watching the socket and close it (paho's client is discarded afterwards)."""
        self._unregister_io()
        self._close_raw_socket()

    def _close_raw_socket(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            return  # the connect thread still owns the socket
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None:
            sock.close()
        elif self._ssl_context is not None and self._ssl_context.wrapped is not None:
            # A handshake that failed inside paho leaves its socket to the garbage collector.
            self._ssl_context.wrapped.close()

    # -- paho callbacks (event loop thread only) ----------------------------------------------

    def _on_socket_register_write(
        self, client: paho.Client, userdata: Any, sock: SocketLike
    ) -> None:
        self._add_writer()

    def _on_socket_unregister_write(
        self, client: paho.Client, userdata: Any, sock: SocketLike
    ) -> None:
        self._remove_writer()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: SocketLike) -> None:
        self._unregister_io()
        self._connection_lost(None)

    def _on_log(self, client: paho.Client, userdata: Any, level: int, message: str) -> None:
        # Also called from the connect thread: only logging and an attribute store here.
        _paho_log.debug("%s", message)
        if level == paho.MQTT_LOG_ERR:
            self._last_error = message

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        connack = self._connack
        if connack is None or connack.done():
            return
        if reason_code.is_failure:
            hint = _CONNACK_HINTS.get(reason_code.value, "")
            connack.set_exception(
                UplinkRefused(
                    f"broker {self._endpoint} refused the connection: {reason_code} "
                    f"(CONNACK reason code 0x{reason_code.value:02x}){hint}",
                    reason_code=reason_code.value,
                )
            )
            return
        # paho does not apply these itself (it cannot change its window once connected):
        # publish() and the forwarder's window do.
        self.limits = BrokerLimits.from_connack(properties)
        connack.set_result(None)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self._disconnect_detail = f"broker sent DISCONNECT: {reason_code}"
        self._connection_lost(None)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason_code.is_failure:
            future.set_exception(PublishRejected(reason_code.value, str(reason_code)))
        else:
            future.set_result(None)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        future = self._pending_subs.pop(mid, None)
        if future is None or future.done():
            return
        code = reason_codes[0]
        if code.is_failure:
            future.set_exception(
                UplinkError(f"broker refused the subscription: {code} (0x{code.value:02x})")
            )
        else:
            future.set_result(code.value)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if len(self._inbox) >= _INBOX_MAX_MESSAGES:
            if self.dropped_messages == 0:
                _log.warning("uplink inbox full (%d messages): dropping", _INBOX_MAX_MESSAGES)
            self.dropped_messages += 1
            return
        self._inbox.append(
            InboundMessage(
                topic=message.topic,
                payload=bytes(message.payload),
                qos=message.qos,
                retain=bool(message.retain),
            )
        )
        self._wake_inbox()

    # -- the end of the connection --------------------------------------------------------

    def _connection_lost(self, detail: str | None) -> None:
        if detail is not None and self._disconnect_detail is None:
            self._disconnect_detail = detail
        if self._lost:
            return
        self._lost = True
        # Deferred: paho calls on_disconnect (with the broker's reason) right after closing.
        self._require_loop().call_soon(self._finalize, None)

    def _finalize(self, error: BaseException | None) -> None:
        if self._finalized:
            return
        self._finalized = True
        self._unregister_io()
        if error is None:
            if self._closing:
                error = UplinkDisconnected(
                    f"connection to broker {self._endpoint} closed by the agent"
                )
            else:
                error = self._disconnected_error()
        connack = self._connack
        if connack is not None and not connack.done():
            _fail_quietly(connack, self._pre_connack_error(self._detail()))
        pending = list(self._pending.values()) + list(self._pending_subs.values())
        self._pending.clear()
        self._pending_subs.clear()
        for future in pending:
            _fail_quietly(future, error)
        closed = self._closed
        if closed is not None and not closed.done():
            if self._closing:
                closed.set_result(None)
            else:
                closed.set_exception(error)
        if self._connected:
            if self._closing:
                _log.info("uplink to %s closed", self._endpoint)
            else:
                _log.warning("uplink to %s lost: %s", self._endpoint, error)
        self._wake_inbox()

    def _detail(self) -> str | None:
        return self._disconnect_detail or self._last_error

    def _disconnected_error(self) -> UplinkDisconnected:
        detail = self._detail() or "connection closed by the broker"
        return UplinkDisconnected(f"connection to broker {self._endpoint} lost: {detail}")

    # -- helpers --------------------------------------------------------------------------

    def _wake_inbox(self) -> None:
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _require_connected(self) -> tuple[asyncio.AbstractEventLoop, paho.Client]:
        if self._loop is None or self._client is None or not self._connected:
            raise RuntimeError("MqttConnection is not connected (use 'async with')")
        return self._loop, self._client

    def _window_full_message(self) -> str:
        return (
            f"publish window full: {self._config.max_inflight} publishes in flight "
            f"(uplink.max_inflight is {self._config.max_inflight}); await one first"
        )


def _is_peer_rejection(exc: BaseException) -> bool:
    """Did the broker end the TLS handshake (an alert, a reset, an EOF)?"""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError):
        return True
    reason = getattr(exc, "reason", None) or ""
    return isinstance(exc, ssl.SSLError) and any(alert in reason for alert in _CLIENT_CERT_ALERTS)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason.lower().replace('_', ' ')} ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _fail_quietly(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail a future the caller may legitimately have dropped, without asyncio's warning."""
    if not future.done():
        future.set_exception(error)
        future.exception()
