"""Watch the broker as the platform would: subscribe to a topic filter, hand messages over.

A thread-based paho client (it is not on the agent's hot path). The tests collect messages
and wait for a count; the demo prints them; the benchmark counts them.

    python -m edge_agent.devtools.watch --host 127.0.0.1 --port 8883 \
        --ca ca.pem --cert client.pem --key client.key --topic 'city/#'
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Received", "Watcher", "main", "summarize"]

_client_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Received:
    """One message seen by the watcher."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


class Watcher:
    """A subscriber on its own paho network thread.

    ``with Watcher(...) as w:`` connects and waits for the SUBACK, so whatever is published
    afterwards is seen. Received messages are kept in :attr:`messages` (unless ``keep`` is
    false) and given to ``on_message`` (on the network thread).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        topic: str,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        qos: int = 1,
        client_id: str | None = None,
        on_message: Callable[[Received], None] | None = None,
        keep: bool = True,
        timeout_s: float = 10.0,
    ) -> None:
        """Plaintext when ``ca_file`` is None; mutual TLS otherwise (cert and key needed)."""
        self.host = host
        self.port = port
        self.topic = topic
        self.qos = qos
        self.timeout_s = timeout_s
        self.count = 0
        """Messages received so far (also when ``keep`` is false)."""
        self._keep = keep
        self._callback = on_message
        self._messages: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._sub_error: str | None = None
        client_id = client_id or f"edge-agent-watch-{next(_client_ids)}"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        if ca_file is not None:
            context = ssl.create_default_context(cafile=ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file is not None and key_file is not None:
                context.load_cert_chain(cert_file, key_file)
            self._client.tls_set_context(context)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    @property
    def messages(self) -> list[Received]:
        """A copy of the messages received so far."""
        with self._changed:
            return list(self._messages)

    def start(self) -> Self:
        """Connect, subscribe and wait for the SUBACK (bounded by ``timeout_s``)."""
        self._client.connect_timeout = self.timeout_s
        self._client.connect(self.host, self.port, keepalive=30, clean_start=True)
        self._client.loop_start()
        if not self._subscribed.wait(self.timeout_s) or self._sub_error is not None:
            self.stop()
            raise TimeoutError(
                f"watcher could not subscribe to {self.topic!r} on {self.host}:{self.port}: "
                f"{self._sub_error or 'no SUBACK in time'}"
            )
        return self

    def stop(self) -> None:
        """Disconnect and join the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, count: int, *, timeout_s: float | None = None) -> list[Received]:
        """Block until ``count`` messages were received; return them (TimeoutError if not)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with self._changed:
            if not self._changed.wait_for(lambda: self.count >= count, timeout):
                raise TimeoutError(
                    f"watcher got {self.count} of {count} messages on {self.topic!r} "
                    f"within {timeout:g} s"
                )
            return list(self._messages)

    def wait_until(self, predicate: Callable[[list[Received]], bool], *,
                   timeout_s: float | None = None, what: str = "the condition") -> list[Received]:
        """Block until ``predicate(messages)`` holds (re-checked on every message)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._messages), timeout):
                raise TimeoutError(f"watcher: {what} not met within {timeout:g} s "
                                   f"({self.count} messages on {self.topic!r})")
            return list(self._messages)

    async def wait_until_async(self, predicate: Callable[[list[Received]], bool], *,
                               timeout_s: float | None = None, what: str = "the condition"
                               ) -> list[Received]:
        """:meth:`wait_until` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_until, predicate, timeout_s=timeout_s,
                                       what=what)

    async def wait_for_async(
        self, count: int, *, timeout_s: float | None = None
    ) -> list[Received]:
        """:meth:`wait_for` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for, count, timeout_s=timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._sub_error = f"connection refused: {reason_code}"
            self._subscribed.set()
            return
        rc, _ = client.subscribe(self.topic, self.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sub_error = paho.error_string(rc)
            self._subscribed.set()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties,
    ) -> None:
        if reason_codes[0].is_failure:
            self._sub_error = f"subscription refused: {reason_codes[0]}"
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),
            retain=bool(message.retain),
            qos=message.qos,
        )
        with self._changed:
            self.count += 1
            if self._keep:
                self._messages.append(received)
            self._changed.notify_all()
        if self._callback is not None:
            self._callback(received)


def summarize(message: Received) -> str:
    """One console line for a message: JSON telemetry as topic, seq and reading count."""
    flags = " [retained]" if message.retain else ""
    try:
        document = json.loads(message.payload)
    except ValueError:
        document = None
    if isinstance(document, dict):
        parts = [f"seq={document['seq']}"] if "seq" in document else []
        readings = document.get("readings")
        if isinstance(readings, list):
            parts.append(f"readings={len(readings)}")
        if not parts:
            parts.append("keys=" + ",".join(sorted(document)))
        return f"{message.topic}{flags} " + " ".join(parts)
    text = message.payload[:60].decode("utf-8", errors="replace")
    more = "..." if len(message.payload) > 60 else ""
    return f"{message.topic}{flags} {len(message.payload)} B: {text}{more}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent.devtools.watch",
        description="Print the messages the broker delivers for a topic filter.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", type=Path, help="CA file (TLS); plaintext if omitted")
    parser.add_argument("--cert", type=Path, help="client certificate (TLS)")
    parser.add_argument("--key", type=Path, help="client key (TLS)")
    parser.add_argument("--topic", default="#", help="topic filter (default: #)")
    args = parser.parse_args(argv)

    def show(message: Received) -> None:
        print(summarize(message), flush=True)

    watcher = Watcher(
        host=args.host,
        port=args.port,
        topic=args.topic,
        ca_file=args.ca,
        cert_file=args.cert,
        key_file=args.key,
        on_message=show,
        keep=False,
    )
    try:
        watcher.start()
    except (OSError, TimeoutError) as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 1
    print(f"watching {args.topic!r} on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
