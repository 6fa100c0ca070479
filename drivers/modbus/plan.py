"""Merging the points of one device into the fewest block reads. Pure: no I/O.

Points are grouped by table (and merge group: ``merge: false`` entries are read on their
own) and sorted by address, then swept once: a point joins the current block while the
block stays within the Modbus limit (125 registers, 2000 bits) and the unused addresses
between the block's end and the point stay within ``max_gap``. Overlapping points share
registers. For fixed limits this greedy sweep gives the fewest blocks, and the result does
not depend on the order of the configuration.

A point with a SunSpec ``scale_factor`` brings its scale factor point into every plan
that reads it (SunSpec wants the value and its exponent read together), merged like any
other point; such a scale factor point is decoded but not published. Its values come last
in the block, after those of the published points, so dropping them is one slice.

A plan is mutable on purpose: when a device rejects a merged block with "illegal data
address", the driver replaces the block by the halves :func:`split_block` gives, and the
following polls read the halves (the split is remembered for as long as the plan lives).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.drivers.modbus.codec import BlockDecoder, ScaledPoint, compile_block, scaled_point
from edge_agent.drivers.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ModbusPoint,
    Table,
)

__all__ = ["ReadBlock", "ReadPlan", "make_block", "minimum_requests", "plan_reads",
           "split_block"]

_TABLE_ORDER = {table: i for i, table in enumerate(Table)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: Table
    start: int
    count: int
    decode: BlockDecoder
    names: tuple[str, ...]
    """Names of the published points, in value order; shared by every sample of this
    block. The decoder's values of the unpublished points follow theirs."""
    points: tuple[ModbusPoint, ...]
    """Every point read, in value order: the published ones, then the others."""
    scaled: tuple[ScaledPoint, ...] = ()
    """Points whose raw value waits for a scale factor of the same poll."""
    factors: tuple[tuple[int, str], ...] = ()
    """(value index, name) of the scale factor points of this block."""


@dataclass(slots=True)
class ReadPlan:
    """The blocks of one poll, in table and address order (updated in place by splits)."""

    blocks: list[ReadBlock]
    scale_factors: bool = False
    """Some values need a scale factor: the driver applies them once all blocks are read."""

    @property
    def point_count(self) -> int:
        return sum(len(block.names) for block in self.blocks)


def _sort_key(p: ModbusPoint) -> tuple[int, int, int, str]:
    return (_TABLE_ORDER[p.table], p.address, p.width, p.name)


def plan_reads(points: Iterable[ModbusPoint], *, max_gap: int = 0) -> ReadPlan:
    """Group ``points`` into the fewest reads that respect the Modbus limits and ``max_gap``
    (unused registers or bits a read may span to save a request)."""
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, not {max_gap}")
    wanted = list(points)
    factors = {p.scale_factor.name: p.scale_factor for p in wanted
               if p.scale_factor is not None}
    named = {p.name for p in wanted}
    wanted.extend(f for name, f in factors.items() if name not in named)
    groups: dict[tuple[Table, str | None], list[ModbusPoint]] = {}
    for point in wanted:
        groups.setdefault((point.table, point.merge_group), []).append(point)
    blocks: list[ReadBlock] = []
    for group in groups.values():
        blocks.extend(_sweep(sorted(group, key=_sort_key), max_gap))
    blocks.sort(key=lambda b: (_TABLE_ORDER[b.table], b.start, b.count, b.names))
    return ReadPlan(blocks, scale_factors=bool(factors))


def _sweep(ordered: list[ModbusPoint], max_gap: int) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    group: list[ModbusPoint] = []
    start = end = 0
    for point in ordered:
        limit = MAX_BITS_PER_READ if point.table in BIT_TABLES else MAX_REGISTERS_PER_READ
        point_end = point.address + point.width
        if (group and point.address - end <= max_gap
                and max(end, point_end) - start <= limit):
            group.append(point)
            end = max(end, point_end)
            continue
        if group:
            blocks.append(make_block(group))
        group, start, end = [point], point.address, point_end
    if group:
        blocks.append(make_block(group))
    return blocks


def make_block(points: Sequence[ModbusPoint]) -> ReadBlock:
    """The block that reads exactly the span of ``points`` (all of one table)."""
    ordered = [p for p in points if p.published] + [p for p in points if not p.published]
    start = min(p.address for p in ordered)
    end = max(p.address + p.width for p in ordered)
    return ReadBlock(table=ordered[0].table, start=start, count=end - start,
                     decode=compile_block(ordered, start),
                     names=tuple(p.name for p in ordered if p.published),
                     points=tuple(ordered),
                     scaled=tuple(scaled_point(i, p) for i, p in enumerate(ordered)
                                  if p.scale_factor is not None),
                     factors=tuple((i, p.name) for i, p in enumerate(ordered)
                                   if not p.published))


def split_block(block: ReadBlock) -> tuple[ReadBlock, ReadBlock] | None:
    """Two blocks holding the first and second half of ``block``'s points (by address),
    or ``None`` when the block holds a single point and cannot be split."""
    if len(block.points) < 2:
        return None
    ordered = sorted(block.points, key=_sort_key)
    middle = len(ordered) // 2
    return make_block(ordered[:middle]), make_block(ordered[middle:])


def minimum_requests(points: Iterable[ModbusPoint]) -> int:
    """The theoretical minimum of read requests for ``points``: the span of each table
    divided by the protocol limit, as if every gap could be read."""
    spans: dict[Table, tuple[int, int]] = {}
    for p in points:
        lo, hi = spans.get(p.table, (p.address, p.address + p.width))
        spans[p.table] = (min(lo, p.address), max(hi, p.address + p.width))
    total = 0
    for table, (lo, hi) in spans.items():
        limit = MAX_BITS_PER_READ if table in BIT_TABLES else MAX_REGISTERS_PER_READ
        total += -(-(hi - lo) // limit)
    return total
