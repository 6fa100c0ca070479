"""Small, bounded figures for health reports and benchmarks."""

from __future__ import annotations

from array import array

__all__ = ["RecentValues"]


class RecentValues:
    """The last ``size`` values of a measurement (seconds, say) in a fixed ring of C doubles:
    8 bytes each, allocated once, so a gateway that runs for months keeps a constant
    footprint while p50/p99 stay available."""

    __slots__ = ("_count", "_ring", "_size")

    def __init__(self, size: int = 1024) -> None:
        self._ring = array("d", bytes(8 * size))
        self._size = size
        self._count = 0

    def add(self, value: float) -> None:
        self._ring[self._count % self._size] = value
        self._count += 1

    def __len__(self) -> int:
        return min(self._count, self._size)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the values held; 0.0 when there are none."""
        n = len(self)
        if n == 0:
            return 0.0
        ordered = sorted(self._ring[:n])
        return ordered[min(n - 1, int(n * q))]
