"""Merging the points of one device into the fewest block reads. Pure: no I/O.

Points are grouped by table and sorted by address, then swept once: a point joins the
current block while the block stays within the Modbus limit (125 registers, 2000 bits) and
the unused addresses between the block's end and the point stay within ``max_gap``.
Overlapping points share registers. For fixed limits this greedy sweep gives the fewest
blocks, and the result does not depend on the order of the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.drivers.modbus.codec import BlockDecoder, compile_block
from edge_agent.drivers.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ModbusPoint,
    Table,
)

__all__ = ["ReadBlock", "ReadPlan", "plan_reads"]

_TABLE_ORDER = {table: i for i, table in enumerate(Table)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: Table
    start: int
    count: int
    decode: BlockDecoder
    names: tuple[str, ...]
    """Point names in value order; shared by every sample of this block."""


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The blocks of one poll, in table and address order."""

    blocks: tuple[ReadBlock, ...]

    @property
    def point_count(self) -> int:
        return sum(len(block.names) for block in self.blocks)


def plan_reads(points: Iterable[ModbusPoint], *, max_gap: int = 0) -> ReadPlan:
    """Group ``points`` into the fewest reads that respect the Modbus limits and ``max_gap``
    (unused registers or bits a read may span to save a request)."""
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, not {max_gap}")
    ordered = sorted(points, key=lambda p: (_TABLE_ORDER[p.table], p.address, p.width, p.name))
    blocks: list[ReadBlock] = []
    group: list[ModbusPoint] = []
    start = end = 0
    for point in ordered:
        limit = MAX_BITS_PER_READ if point.table in BIT_TABLES else MAX_REGISTERS_PER_READ
        point_end = point.address + point.width
        if (group and point.table is group[0].table
                and point.address - end <= max_gap
                and max(end, point_end) - start <= limit):
            group.append(point)
            end = max(end, point_end)
            continue
        if group:
            blocks.append(_block(group, start, end))
        group, start, end = [point], point.address, point_end
    if group:
        blocks.append(_block(group, start, end))
    return ReadPlan(tuple(blocks))


def _block(points: list[ModbusPoint], start: int, end: int) -> ReadBlock:
    return ReadBlock(table=points[0].table, start=start, count=end - start,
                     decode=compile_block(points, start),
                     names=tuple(p.name for p in points))
