"""Encoding of telemetry contract v1 (docs/telemetry.md, telemetry-v1.schema.json).

A message is built in two parts so that the durable buffer stores only what is specific to
the readings: the *body* (the ``samples`` and ``events`` members, encoded once when the
batch is committed) and the *envelope* (contract version, gateway, site and the sequence
number), added when the batch is published. Readings of one device taken at one instant
with one quality are grouped in one sample, so a reading costs a name and a value in the
payload, not a repeated device name and timestamp.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from edge_agent.drivers.base import Sample

__all__ = [
    "CONTRACT_VERSION",
    "BodyBuilder",
    "DeviceEvent",
    "MessageBody",
    "Topics",
    "encode_body",
    "envelope",
    "format_ts",
    "status_payload",
    "topics",
]

CONTRACT_VERSION = 1


class DeviceEvent(NamedTuple):
    """A change of a device's state (``available``/``unavailable``), sent with the readings
    in the same ordered stream so the platform sees why readings stopped or turned bad."""

    device: str
    ts: float
    state: str
    detail: str | None = None


def format_ts(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: ``2026-11-24T04:10:00.123Z``."""
    whole = int(ts)
    millis = int((ts - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


@dataclass(frozen=True, slots=True)
class MessageBody:
    """One stored batch: the encoded ``samples``/``events`` members of a message."""

    readings: int
    body: bytes


def _sample_object(sample: Sample) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "device": sample.device,
        "ts": format_ts(sample.ts),
        "quality": sample.quality.value,
        "values": dict(zip(sample.names, sample.values, strict=True)),
    }
    if sample.reason is not None:
        obj["reason"] = sample.reason
    return obj


def _event_object(event: DeviceEvent) -> dict[str, Any]:
    obj: dict[str, Any] = {"device": event.device, "ts": format_ts(event.ts),
                           "type": "device_state", "state": event.state}
    if event.detail is not None:
        obj["detail"] = event.detail
    return obj


class BodyBuilder:
    """Encodes samples and events as they arrive into message bodies of at most
    ``max_readings`` readings each.

    Encoding on arrival keeps only compact JSON bytes in memory while a commit window is
    open, not the samples' Python objects. A sample is never split (a block of a few hundred
    readings stays one sample), so a body exceeds ``max_readings`` only when a single sample
    does. Events count as one reading.
    """

    __slots__ = ("_bodies", "_count", "_events", "_max_readings", "_samples")

    def __init__(self, *, max_readings: int) -> None:
        self._max_readings = max_readings
        self._bodies: list[MessageBody] = []
        self._samples: list[bytes] = []
        self._events: list[bytes] = []
        self._count = 0

    def add(self, item: Sample | DeviceEvent) -> None:
        if isinstance(item, Sample):
            size = len(item.names)
            encoded = orjson.dumps(_sample_object(item))
        else:
            size = 1
            encoded = orjson.dumps(_event_object(item))
        if self._count and self._count + size > self._max_readings:
            self._close()
        (self._samples if isinstance(item, Sample) else self._events).append(encoded)
        self._count += size

    @property
    def readings(self) -> int:
        """Readings added and not yet taken."""
        return self._count + sum(b.readings for b in self._bodies)

    def take(self) -> list[MessageBody]:
        """Every body built so far, the open one included; the builder starts empty."""
        if self._count:
            self._close()
        bodies, self._bodies = self._bodies, []
        return bodies

    def _close(self) -> None:
        # The members are encoded without their braces so the envelope can go around them.
        body = b'"samples":[' + b",".join(self._samples) + b"]"
        if self._events:
            body += b',"events":[' + b",".join(self._events) + b"]"
        self._bodies.append(MessageBody(readings=self._count, body=body))
        self._samples, self._events, self._count = [], [], 0


def encode_body(items: Iterable[Sample | DeviceEvent], *, max_readings: int
                ) -> list[MessageBody]:
    """Encode items into message bodies at once (see :class:`BodyBuilder`)."""
    builder = BodyBuilder(max_readings=max_readings)
    for item in items:
        builder.add(item)
    return builder.take()


def envelope(*, gateway: str, site: str, seq: int, body: bytes, historical: bool = False
             ) -> bytes:
    """The complete message for a stored body with its sequence number."""
    head = (b'{"v":%d,"gateway":%s,"site":%s,"seq":%d,'
            % (CONTRACT_VERSION, orjson.dumps(gateway), orjson.dumps(site), seq))
    if historical:
        head += b'"historical":true,'
    return head + body + b"}"


def status_payload(*, gateway: str, site: str, state: str, reason: str | None = None) -> bytes:
    """Retained status message (``online``/``offline``) on the status topic."""
    obj: dict[str, Any] = {"v": CONTRACT_VERSION, "gateway": gateway, "site": site,
                           "state": state, "ts": format_ts(time.time())}
    if reason is not None:
        obj["reason"] = reason
    return orjson.dumps(obj)


class Topics(NamedTuple):
    telemetry: str
    status: str


def topics(prefix: str, site: str, gateway: str) -> Topics:
    """Topic layout: ``<prefix>/<site>/<gateway>/{telemetry,status}``."""
    base = f"{prefix}/{site}/{gateway}"
    return Topics(telemetry=f"{base}/telemetry", status=f"{base}/status")


def readings_in(items: Sequence[Sample | DeviceEvent]) -> int:
    """Number of readings the items carry (events count as one)."""
    return sum(len(i.names) if isinstance(i, Sample) else 1 for i in items)
