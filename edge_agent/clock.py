"""Is the wall clock right? Gateways without a real-time clock boot with a stale time and
only learn the real one when NTP syncs; an operator or NTP may also step the clock while
the agent runs.

The monitor tracks ``offset = wall - monotonic``. Readings are stamped with the wall clock
as usual; while the clock is not trusted, the writer tags what it commits with the offset
in force, and the buffer holds those batches back. When the clock becomes trusted (or
steps), the difference between the new offset and a batch's offset is exactly the error of
its timestamps, as long as the monotonic clock ran on (same boot): the buffer rewrites
them before anything is forwarded. What cannot be corrected (taken in an earlier boot, or
no sync within ``max_hold_s``) is sent flagged, never silently with a wrong time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

__all__ = ["BOOT_ID", "ClockMonitor", "SyncCheck", "kernel_synchronized"]

log = logging.getLogger(__name__)

STEP_THRESHOLD_S = 1.0
"""A change of ``wall - monotonic`` larger than this is a clock step, not drift."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()
"""Monotonic time is only comparable within one boot."""


class SyncCheck(StrEnum):
    """How the agent learns whether the system clock is synchronised."""

    NONE = "none"
    """Trust the clock (machines with an RTC or a clock set before the agent starts)."""
    KERNEL = "kernel"
    """Ask the kernel (``adjtimex``): works with systemd-timesyncd, chrony and ntpd."""


def kernel_synchronized() -> bool:
    """The kernel's view: ``adjtimex`` returns TIME_ERROR (5) while unsynchronised."""
    import ctypes  # only on gateways that use the check: ctypes costs ~1.3 MB of RSS

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(512)  # a zeroed struct timex: modes 0 = read only
    return int(libc.adjtimex(buffer)) != 5


class ClockMonitor:
    """Tracks whether timestamps can be trusted; the sources are injectable for tests."""

    def __init__(self, *, synchronized: Callable[[], bool] | None = None,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._synchronized = synchronized
        self.wall = wall
        self._monotonic = monotonic
        self.offset = wall() - monotonic()
        self.trusted = synchronized() if synchronized is not None else True
        self.steps = 0
        if not self.trusted:
            log.warning("system clock not synchronised: readings are held back and their "
                        "timestamps corrected once it is")

    def check(self) -> bool:
        """Re-read the sources; True when the clock just became trusted or stepped (the
        moment to correct held timestamps)."""
        offset = self.wall() - self._monotonic()
        stepped = abs(offset - self.offset) > STEP_THRESHOLD_S
        if stepped:
            self.steps += 1
            log.warning("system clock stepped by %+.3f s", offset - self.offset)
        self.offset = offset
        was_trusted = self.trusted
        if self._synchronized is not None:
            self.trusted = self._synchronized()
        if self.trusted and not was_trusted:
            log.info("system clock synchronised: correcting held timestamps")
        return self.trusted and (stepped or not was_trusted)
