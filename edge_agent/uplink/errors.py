"""The uplink's own exceptions: paho, ssl and socket errors are translated into these once.

Whether an error is worth retrying is a property of its type (:attr:`UplinkError.retryable`):
the same attempt may succeed later without anyone changing the configuration or the broker.
The forwarder may still retry the others (with a long backoff), but should log them loudly.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "PublishRejected",
    "UplinkDisconnected",
    "UplinkError",
    "UplinkRefused",
    "UplinkTlsError",
    "UplinkUnreachable",
]


class UplinkError(Exception):
    """Base of every error raised by the uplink."""

    retryable: ClassVar[bool] = False


class UplinkUnreachable(UplinkError):
    """The TCP connection to the broker could not be opened (refused, timed out, no route)."""

    retryable = True


class UplinkTlsError(UplinkError):
    """TLS failed on our side: broker certificate not verified, bad local key or certificate."""


class UplinkRefused(UplinkError):
    """The broker refused us: a failing CONNACK, or it dropped us during the TLS handshake."""

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        """CONNACK reason code, when the refusal came as a CONNACK."""


class UplinkDisconnected(UplinkError):
    """The connection was lost (or closed); publishes still pending fail with this."""

    retryable = True


class PublishRejected(UplinkError):
    """The broker acknowledged a publish with an MQTT 5 failure reason code (>= 0x80)."""

    def __init__(self, reason_code: int, reason: str) -> None:
        super().__init__(f"broker rejected the publish: {reason} (reason code 0x{reason_code:02x})")
        self.reason_code = reason_code
        self.reason = reason

    def __reduce__(self) -> tuple[type[PublishRejected], tuple[int, str]]:
        return (type(self), (self.reason_code, self.reason))
