"""Telemetry contract v1: what the platform receives (see docs/telemetry.md)."""

from .contract import (
    CONTRACT_VERSION,
    DeviceEvent,
    MessageBody,
    encode_body,
    envelope,
    format_ts,
    status_payload,
    topics,
)

__all__ = [
    "CONTRACT_VERSION",
    "DeviceEvent",
    "MessageBody",
    "encode_body",
    "envelope",
    "format_ts",
    "status_payload",
    "topics",
]
