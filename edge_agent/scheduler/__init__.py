"""Fixed-rate polling of devices with health tracking."""

from .poller import DevicePoller, DeviceStats, PollGroup, poll_groups

__all__ = ["DevicePoller", "DeviceStats", "PollGroup", "poll_groups"]
