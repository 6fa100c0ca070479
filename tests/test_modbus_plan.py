"""Tests of the Modbus read planner: fewest blocks within the protocol limits and max_gap."""

from __future__ import annotations

import random

import pytest

from edge_agent.drivers.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ByteOrder,
    DataType,
    ModbusPoint,
    Table,
)
from edge_agent.drivers.modbus.plan import ReadPlan, minimum_requests, plan_reads, split_block


def point(name: str, address: int, type_: DataType = DataType.UINT16,
          table: Table = Table.HOLDING, order: ByteOrder = ByteOrder.ABCD) -> ModbusPoint:
    return ModbusPoint(name=name, interval_s=1.0, table=table, address=address, type=type_,
                       order=order)


def shape(plan: ReadPlan) -> list[tuple[Table, int, int, tuple[str, ...]]]:
    return [(b.table, b.start, b.count, b.names) for b in plan.blocks]


def test_contiguous_points_make_one_block() -> None:
    """Adjacent points of one table are read with one request."""
    plan = plan_reads([point("a", 0), point("b", 1, DataType.FLOAT32), point("c", 3)])
    assert shape(plan) == [(Table.HOLDING, 0, 4, ("a", "b", "c"))]


def test_register_limit_splits_blocks() -> None:
    """126 adjacent registers need two reads: 125 and 1."""
    plan = plan_reads([point(f"r{i}", i) for i in range(126)])
    assert [(b.start, b.count) for b in plan.blocks] == [(0, 125), (125, 1)]


def test_two_register_point_is_never_split() -> None:
    """A float32 that would cross the 125-register limit starts the next block."""
    plan = plan_reads([point(f"f{i}", 2 * i, DataType.FLOAT32) for i in range(63)])
    assert [(b.start, b.count) for b in plan.blocks] == [(0, 124), (124, 2)]


def test_bit_limit_splits_blocks() -> None:
    """2001 adjacent coils need two reads: 2000 and 1."""
    plan = plan_reads([point(f"c{i}", i, DataType.BOOL, Table.COIL) for i in range(2001)])
    assert [(b.start, b.count) for b in plan.blocks] == [(0, MAX_BITS_PER_READ), (2000, 1)]


@pytest.mark.parametrize(("max_gap", "expected"), [
    (0, [(0, 1), (5, 1)]),
    (3, [(0, 1), (5, 1)]),
    (4, [(0, 6)]),
])
def test_max_gap(max_gap: int, expected: list[tuple[int, int]]) -> None:
    """Points merge only when the unused registers between them are within max_gap."""
    plan = plan_reads([point("a", 0), point("b", 5)], max_gap=max_gap)
    assert [(b.start, b.count) for b in plan.blocks] == expected


def test_tables_are_never_merged() -> None:
    """Points of different tables at the same address go to separate reads."""
    plan = plan_reads([point("h", 0), point("i", 0, table=Table.INPUT),
                       point("c", 0, DataType.BOOL, Table.COIL),
                       point("d", 0, DataType.BOOL, Table.DISCRETE)], max_gap=100)
    assert [b.table for b in plan.blocks] == [Table.HOLDING, Table.INPUT, Table.COIL,
                                              Table.DISCRETE]


def test_overlapping_points_share_a_block() -> None:
    """Points that overlap (a uint32 and its low word) are read once."""
    plan = plan_reads([point("whole", 10, DataType.UINT32), point("low", 11)])
    assert shape(plan) == [(Table.HOLDING, 10, 2, ("whole", "low"))]


def test_point_inside_previous_point_does_not_shrink_block() -> None:
    """A short point inside a longer one keeps the block end of the longer point."""
    plan = plan_reads([point("f", 0, DataType.FLOAT32), point("hi", 0), point("n", 2)])
    assert shape(plan) == [(Table.HOLDING, 0, 3, ("hi", "f", "n"))]


def _random_points(seed: int) -> list[ModbusPoint]:
    rng = random.Random(seed)
    points = []
    for i in range(400):
        table = rng.choice(list(Table))
        if table in BIT_TABLES:
            type_ = DataType.BOOL
        else:
            type_ = rng.choice([t for t in DataType if t is not DataType.BOOL])
        points.append(point(f"p{i}", rng.randrange(0, 3000), type_, table,
                            rng.choice(list(ByteOrder))))
    return points


@pytest.mark.parametrize("max_gap", [0, 7, 123])
def test_every_point_covered_once_within_limits(max_gap: int) -> None:
    """Every point is in exactly one block, inside its range, and no block breaks a limit."""
    points = _random_points(max_gap)
    by_name = {p.name: p for p in points}
    plan = plan_reads(points, max_gap=max_gap)
    names = [n for b in plan.blocks for n in b.names]
    assert sorted(names) == sorted(by_name)
    for block in plan.blocks:
        limit = MAX_BITS_PER_READ if block.table in BIT_TABLES else MAX_REGISTERS_PER_READ
        assert 1 <= block.count <= limit
        for name in block.names:
            p = by_name[name]
            assert p.table is block.table
            assert block.start <= p.address
            assert p.address + p.width <= block.start + block.count


def test_plan_does_not_depend_on_config_order() -> None:
    """Shuffling the configured points gives the same blocks and the same name order."""
    points = _random_points(1)
    shuffled = points[:]
    random.Random(2).shuffle(shuffled)
    assert shape(plan_reads(points, max_gap=5)) == shape(plan_reads(shuffled, max_gap=5))


def test_decoders_match_blocks() -> None:
    """Each block's decoder turns that block's registers into its values in name order."""
    plan = plan_reads([point("b", 3), point("a", 1)], max_gap=1)
    (block,) = plan.blocks
    assert (block.start, block.count, block.names) == (1, 3, ("a", "b"))
    assert block.decode([10, 0, 30]) == [10, 30]


def test_merge_false_entries_are_read_on_their_own() -> None:
    """Points of a merge: false entry are never merged with other points, only together."""
    iso = [ModbusPoint(name=f"iso_{i}", interval_s=1.0, table=Table.HOLDING, address=2 + i,
                       type=DataType.UINT16, merge_group="iso") for i in range(2)]
    plan = plan_reads([point("a", 0), point("b", 1), *iso, point("c", 4)], max_gap=10)
    assert shape(plan) == [(Table.HOLDING, 0, 5, ("a", "b", "c")),
                           (Table.HOLDING, 2, 2, ("iso_0", "iso_1"))]


def test_split_block_halves_points_by_address() -> None:
    """split_block gives two blocks covering the first and second half of the points."""
    plan = plan_reads([point(f"r{i}", 10 * i) for i in range(5)], max_gap=100)
    (block,) = plan.blocks
    halves = split_block(block)
    assert halves is not None
    assert [(b.start, b.count, b.names) for b in halves] == [
        (0, 11, ("r0", "r1")), (20, 21, ("r2", "r3", "r4"))]
    assert halves[1].decode([3] + [0] * 19 + [4]) == [3, 0, 4]


def test_single_point_block_cannot_split() -> None:
    """A block of one point has no halves."""
    (block,) = plan_reads([point("a", 0, DataType.FLOAT32)]).blocks
    assert split_block(block) is None


def test_minimum_requests_is_span_over_limit() -> None:
    """The theoretical minimum counts each table's span in units of the protocol limit."""
    points = [point("a", 0), point("b", 300), point("c", 0, DataType.BOOL, Table.COIL)]
    assert minimum_requests(points) == 3 + 1
