"""Telemetry contract v1: what the platform receives (see docs/telemetry.md)."""

from .contract import (
    CONTRACT_VERSION,
    DeviceEvent,
    MessageBody,
    batches_of,
    encode_body,
    format_ts,
    status_payload,
    telemetry_message,
    topics,
)

__all__ = [
    "CONTRACT_VERSION",
    "DeviceEvent",
    "MessageBody",
    "batches_of",
    "encode_body",
    "format_ts",
    "status_payload",
    "telemetry_message",
    "topics",
]
