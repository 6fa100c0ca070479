"""The validated configuration of one gateway, as typed, immutable values.

Everything here has been checked by :mod:`edge_agent.config.loader` before any I/O.
Driver-specific parts (a device's connection and points) are typed by the driver package
that owns them; the core only relies on :class:`PointBase`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge_agent.clock import SyncCheck

__all__ = [
    "AgentConfig",
    "BufferConfig",
    "ClockConfig",
    "DeviceConfig",
    "DrainOrder",
    "Durability",
    "GatewayConfig",
    "MqttVersion",
    "OverflowPolicy",
    "PointBase",
    "Security",
    "ThinRule",
    "TlsConfig",
    "UplinkConfig",
]


class Security(StrEnum):
    """How the uplink is protected. ``plaintext`` must be chosen explicitly."""

    TLS = "tls"
    PLAINTEXT = "plaintext"


class MqttVersion(StrEnum):
    """MQTT protocol version. Only v5 tells the agent when the broker refused a publish."""

    V5 = "5"
    V311 = "3.1.1"


class Durability(StrEnum):
    """SQLite ``synchronous`` mode of the buffer (see docs/operations.md for the loss bound)."""

    FULL = "full"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    id: str
    site: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    ca_file: Path
    """CA bundle that signs the broker's certificate; the broker is always verified."""
    cert_file: Path
    key_file: Path
    server_name: str | None = None
    """Name expected in the broker's certificate, when it differs from ``uplink.host``."""


class DrainOrder(StrEnum):
    """In which order a backlog (readings stored while the uplink was down or slow) goes out."""

    OLDEST_FIRST = "oldest_first"
    """Strictly in sequence order: live readings wait until the backlog is sent."""
    LIVE_FIRST = "live_first"
    """New readings go out as they are committed; the backlog drains beside them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    host: str
    port: int
    security: Security
    tls: TlsConfig | None
    topic_prefix: str
    client_id: str
    mqtt_version: MqttVersion = MqttVersion.V5
    keepalive_s: float = 30.0
    max_inflight: int = 8
    connect_timeout_s: float = 10.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0
    shutdown_grace_s: float = 5.0
    username: str | None = None
    password: str | None = None
    max_message_bytes: int = 128 * 1024
    """Under a backlog several stored batches go out in one message up to this payload size
    (fewer, larger messages when the broker is slow); a single batch goes alone even when
    larger. The broker's maximum packet size (MQTT 5 CONNACK) lowers it further and is the
    only hard limit."""
    coalesce: bool = True
    """``False``: one stored batch per message, always (for consumers that predate the
    ``batches`` form of the contract)."""
    drain: DrainOrder = DrainOrder.OLDEST_FIRST
    historical_after_s: float = 10.0
    """A message whose readings were committed longer ago than this is flagged
    ``historical`` (backlog, not live data)."""
    ledger_interval_s: float = 300.0
    """A ledger message goes out on every connect and at least this often, with the
    sequence position, so the platform can tell "not arrived yet" from "lost"."""


class OverflowPolicy(StrEnum):
    """What the buffer does when a limit (size, free space) is reached."""

    DROP_OLDEST = "drop_oldest"
    """Evict the oldest telemetry (then, only if nothing else is left, the oldest events)."""
    DROP_NEWEST = "drop_newest"
    """Refuse new readings; what is stored stays."""
    BLOCK = "block"
    """Stop taking readings: the queue fills, polling slows down (skipped ticks)."""


@dataclass(frozen=True, slots=True)
class ThinRule:
    """How old telemetry is thinned before any is dropped (see edge_agent.buffer.thinning):
    exactly one of the two is set."""

    keep_every: int | None = None
    """Keep every Nth good sample of each device."""
    min_max_window_s: float | None = None
    """Keep the lowest and highest reading of each point per window of this many seconds."""
    older_than_s: float = 3600.0
    """Only readings committed longer ago are thinned: recent data keeps full resolution
    (and is evicted, oldest first, once nothing older is left to thin)."""

    def describe(self) -> str:
        if self.keep_every is not None:
            return f"keep_every={self.keep_every}"
        return f"min_max_window_s={self.min_max_window_s:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferConfig:
    path: Path
    max_bytes: int = 1024**3
    max_age_s: float | None = None
    """Readings older than this are evicted (``None``: no age limit)."""
    min_free_bytes: int = 64 * 1024**2
    """Free space the buffer always leaves on its filesystem (SD cards fill up)."""
    policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    durability: Durability = Durability.FULL
    commit_interval_s: float = 0.25
    """Group-commit period: readings are accepted (durable) at most this long after polling."""
    queue_max_samples: int = 4096
    """Bound of the in-memory queue between pollers and the writer, in samples (blocks)."""
    max_message_readings: int = 1000
    """Readings per telemetry message (and per stored batch)."""
    thin: ThinRule | None = None
    """Thin the oldest telemetry before dropping any (``None``: drop whole batches)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockConfig:
    sync_check: SyncCheck = SyncCheck.NONE
    """``kernel`` on gateways without a real-time clock (Raspberry Pi): readings taken
    before NTP sync are held back and their timestamps corrected once it arrives."""
    max_hold_s: float = 600.0
    """How long to wait for sync before sending held readings flagged as unsynchronised."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PointBase:
    """What every driver's point has in common."""

    name: str
    interval_s: float
    unit: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    name: str
    driver: str
    """Registry name of the driver kind (``modbus_tcp``, ...)."""
    connection: Any
    """Driver-specific connection settings (a frozen dataclass of the driver package)."""
    points: tuple[Any, ...]
    """Driver-specific points, each a subclass of :class:`PointBase`."""
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    gateway: GatewayConfig
    uplink: UplinkConfig
    buffer: BufferConfig
    devices: tuple[DeviceConfig, ...]
    clock: ClockConfig = ClockConfig()
    log_level: str = "INFO"
    source: str = "<memory>"
