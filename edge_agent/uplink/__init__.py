"""The uplink: MQTT over (mutual) TLS and the forwarder that feeds it from the buffer."""

from .errors import (
    PublishRejected,
    UplinkDisconnected,
    UplinkError,
    UplinkRefused,
    UplinkTlsError,
    UplinkUnreachable,
)
from .forwarder import Forwarder

__all__ = [
    "Forwarder",
    "PublishRejected",
    "UplinkDisconnected",
    "UplinkError",
    "UplinkRefused",
    "UplinkTlsError",
    "UplinkUnreachable",
]
