"""The seam between drivers and the scheduler: samples, errors and the driver protocol.

A driver owns one device connection (a TCP endpoint, a serial bus, a session). It reads
whole blocks and returns :class:`Sample` objects, one per block and timestamp, so the hot
path never builds an object per reading. Drivers raise only the error types below; the
scheduler decides what to retry from the type, never from the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

__all__ = [
    "DeviceError",
    "DeviceRejected",
    "DeviceTimeout",
    "DeviceUnavailable",
    "Driver",
    "Quality",
    "Sample",
]


class Quality(StrEnum):
    """Quality of a reading, as carried in the telemetry contract."""

    GOOD = "good"
    BAD = "bad"


class Sample(NamedTuple):
    """Readings of one device taken at one instant with one quality.

    ``names`` and ``values`` are parallel; a value is ``None`` when the reading has no value
    (bad quality, or a float that is not finite). ``names`` is usually a tuple shared by every
    sample of the same block, so a sample costs one small object per block, not per reading.
    """

    device: str
    ts: float
    """When the reading was taken, on the **monotonic** clock (``time.monotonic()``). The
    writer turns it into UTC with the clock offset it trusts at that moment, so a wall
    clock that is wrong or steps (no RTC, NTP not synced yet) can be corrected later."""
    quality: Quality
    names: Sequence[str]
    values: Sequence[Any]
    reason: str | None = None
    """Why the quality is bad (short, stable text such as ``timeout``); ``None`` when good."""


class DeviceError(Exception):
    """Base of every error a driver raises."""


class DeviceUnavailable(DeviceError):
    """The connection to the device is unusable: the scheduler closes it and reconnects
    with backoff."""


class DeviceTimeout(DeviceUnavailable):
    """The device did not answer within the configured timeout."""


class DeviceRejected(DeviceError):
    """The device answered with an error (for Modbus, an exception response): the
    connection is fine, only the request failed."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Driver(Protocol):
    """What the scheduler needs of a driver.

    ``plan`` is called once per poll group before any I/O and returns an opaque read plan
    (for Modbus: the merged register blocks and their decoders). ``read`` performs one poll
    of a plan. Partial failures (one block rejected) come back as bad-quality samples for
    that block; whole-connection failures are raised as :class:`DeviceUnavailable`.
    """

    def plan(self, point_names: Sequence[str]) -> object: ...

    async def open(self) -> None: ...

    async def read(self, plan: Any) -> list[Sample]: ...

    async def close(self) -> None: ...
