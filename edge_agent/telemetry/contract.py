"""Encoding of telemetry contract v1 (docs/telemetry.md, telemetry-v1.schema.json).

A message is built in two parts so that the durable buffer stores only what is specific to
the readings: the *body* (the ``samples`` and ``events`` members, encoded once when the
batch is committed) and the *envelope* (contract version, gateway, site and the sequence
number), added when the batch is published. Readings of one device taken at one instant
with one quality are grouped in one sample, so a reading costs a name and a value in the
payload, not a repeated device name and timestamp.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

import orjson

from edge_agent.drivers.base import Sample

__all__ = [
    "BATCH_OVERHEAD",
    "CONTRACT_VERSION",
    "ENVELOPE_OVERHEAD",
    "BodyBuilder",
    "DeviceEvent",
    "Kind",
    "MessageBody",
    "StoredBody",
    "Topics",
    "batches_of",
    "encode_body",
    "format_ts",
    "ledger_payload",
    "parse_ts",
    "status_payload",
    "telemetry_message",
    "topics",
]

CONTRACT_VERSION = 1


class DeviceEvent(NamedTuple):
    """A change of a device's state (``available``/``unavailable``), sent with the readings
    in the same ordered stream so the platform sees why readings stopped or turned bad."""

    device: str
    ts: float
    """Monotonic time, like :attr:`Sample.ts`."""
    state: str
    detail: str | None = None


def format_ts(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: ``2026-11-24T04:10:00.123Z``."""
    whole = int(ts)
    millis = int((ts - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


class Kind(IntEnum):
    """What a stored message carries; the buffer evicts telemetry before events."""

    TELEMETRY = 0
    EVENTS = 1


def parse_ts(text: str) -> float:
    """Inverse of :func:`format_ts`."""
    whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole + int(text[20:23]) / 1000


@dataclass(frozen=True, slots=True)
class MessageBody:
    """One stored batch: the encoded ``samples``/``events`` members of a message."""

    readings: int
    body: bytes
    kind: Kind = Kind.TELEMETRY


def _sample_object(sample: Sample, offset: float) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "device": sample.device,
        "ts": format_ts(sample.ts + offset),
        "quality": sample.quality.value,
        "values": dict(zip(sample.names, sample.values, strict=True)),
    }
    if sample.reason is not None:
        obj["reason"] = sample.reason
    return obj


def _event_object(event: DeviceEvent, offset: float) -> dict[str, Any]:
    obj: dict[str, Any] = {"device": event.device, "ts": format_ts(event.ts + offset),
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
    does. Events go into messages of their own (``samples`` empty), so the buffer can evict
    telemetry and keep them; an event counts as one reading.
    """

    __slots__ = ("_bodies", "_count", "_events", "_max_readings", "_samples", "_seal", "offset")

    def __init__(self, *, max_readings: int, offset: float = 0.0,
                 seal: Callable[[bytes], bytes] | None = None) -> None:
        self._max_readings = max_readings
        self._seal = seal
        """Applied to every finished body (the buffer compresses it for storage): a window
        of encoded readings then waits for its commit in its stored, smaller form."""
        self.offset = offset
        """Added to the items' monotonic timestamps to make them UTC (wall - monotonic)."""
        self._bodies: list[MessageBody] = []
        self._samples: list[bytes] = []
        self._events: list[bytes] = []
        self._count = 0

    def add(self, item: Sample | DeviceEvent) -> None:
        if not isinstance(item, Sample):
            self._events.append(orjson.dumps(_event_object(item, self.offset)))
            return
        size = len(item.names)
        if self._count and self._count + size > self._max_readings:
            self._close()
        self._samples.append(orjson.dumps(_sample_object(item, self.offset)))
        self._count += size

    def take(self) -> list[MessageBody]:
        """Every body built so far (events first), the open one included; the builder
        starts empty."""
        bodies: list[MessageBody] = []
        if self._events:
            body = b'"samples":[],"events":[' + b",".join(self._events) + b"]"
            bodies.append(MessageBody(readings=len(self._events), kind=Kind.EVENTS,
                                      body=self._seal(body) if self._seal else body))
            self._events = []
        if self._count:
            self._close()
        bodies += self._bodies
        self._bodies = []
        return bodies

    def _close(self) -> None:
        # The members are encoded without their braces so the envelope can go around them.
        body = b'"samples":[' + b",".join(self._samples) + b"]"
        self._bodies.append(MessageBody(readings=self._count,
                                        body=self._seal(body) if self._seal else body))
        self._samples, self._count = [], 0


def encode_body(items: Iterable[Sample | DeviceEvent], *, max_readings: int,
                offset: float = 0.0) -> list[MessageBody]:
    """Encode items into message bodies at once (see :class:`BodyBuilder`)."""
    builder = BodyBuilder(max_readings=max_readings, offset=offset)
    for item in items:
        builder.add(item)
    return builder.take()


BATCH_OVERHEAD = 64
"""Bytes a stored batch adds around its body in a message (``{"seq":…,"clock":…}``)."""
ENVELOPE_OVERHEAD = 320
"""Bytes a message adds around its batches, at most (names are at most 64 characters)."""


class StoredBody(Protocol):
    """A stored batch as the envelope needs it (:class:`edge_agent.buffer.store.StoredBatch`)."""

    @property
    def seq(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def clock_unsynchronized(self) -> bool: ...


def _clock_member(batch: StoredBody) -> bytes:
    return b'"clock":"unsynchronized",' if batch.clock_unsynchronized else b""


def telemetry_message(*, gateway: str, site: str, batches: Sequence[StoredBody],
                      historical: bool = False) -> bytes:
    """The message for one or more consecutive stored batches, bodies reused as stored.

    One batch gives the plain form (``seq``, ``samples``, ``events``); several give the
    coalesced form, a ``batches`` array of the same members with each batch's own ``seq``,
    so the platform deduplicates per sequence number exactly as for single messages."""
    head = b'{"v":%d,"gateway":%s,"site":%s,"seq":%d,' % (
        CONTRACT_VERSION, orjson.dumps(gateway), orjson.dumps(site), batches[0].seq)
    if historical:
        head += b'"historical":true,'
    if len(batches) == 1:
        return head + _clock_member(batches[0]) + batches[0].body + b"}"
    parts = [b'{"seq":%d,' % b.seq + _clock_member(b) + b.body + b"}" for b in batches]
    return head + b'"seq_last":%d,"batches":[' % batches[-1].seq + b",".join(parts) + b"]}"


def batches_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A consumer's view of a decoded telemetry message: its batches, each with ``seq``,
    ``samples`` and optionally ``events`` and ``clock``, whichever form it came in. This is
    the reference for the platform: deduplicate on (gateway, batch ``seq``)."""
    if "batches" in message:
        return list(message["batches"])
    return [message]


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
    ledger: str


def topics(prefix: str, site: str, gateway: str) -> Topics:
    """Topic layout: ``<prefix>/<site>/<gateway>/{telemetry,status,ledger}``."""
    base = f"{prefix}/{site}/{gateway}"
    return Topics(telemetry=f"{base}/telemetry", status=f"{base}/status",
                  ledger=f"{base}/ledger")


def ledger_payload(*, gateway: str, site: str, entries: Sequence[Any],
                   totals: dict[str, int], last_seq: int, oldest_buffered: int | None) -> bytes:
    """Loss-ledger message: sequence ranges that will never be sent, and why, with the
    gateway's position: the highest number assigned and the lowest still buffered.

    ``entries`` are :class:`edge_agent.buffer.store.LedgerEntry` values (duck-typed here so
    the contract does not depend on the buffer)."""
    return orjson.dumps({
        "v": CONTRACT_VERSION, "gateway": gateway, "site": site, "ts": format_ts(time.time()),
        "entries": [{"id": e.id, "at": format_ts(e.at), "reason": e.reason,
                     "first_seq": e.first_seq, "last_seq": e.last_seq,
                     "messages": e.messages, "readings": e.readings, "detail": e.detail}
                    for e in entries],
        "totals": totals,
        "last_seq": last_seq,
        "oldest_buffered": oldest_buffered,
    })
