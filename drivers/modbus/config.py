"""Modbus device configuration: connection settings and register points.

Validation only; nothing here imports pymodbus, so ``edge-agent validate`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edge_agent.config.model import PointBase
from edge_agent.config.nodes import MISSING, Cursor

__all__ = [
    "BIT_TABLES",
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "ByteOrder",
    "DataType",
    "ModbusPoint",
    "ModbusTcpConnection",
    "Table",
    "parse_tcp_device",
    "register_count",
]

MAX_REGISTERS_PER_READ = 125
"""Modbus limit for function codes 3 and 4 (Modbus Application Protocol v1.1b3, 6.3/6.4)."""
MAX_BITS_PER_READ = 2000
"""Modbus limit for function codes 1 and 2."""


class Table(StrEnum):
    """The four Modbus data tables."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"


BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE})


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"


_REGISTERS = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
}


def register_count(data_type: DataType) -> int:
    """Registers (or bits, for ``bool``) one value of ``data_type`` occupies."""
    return _REGISTERS[data_type]


class ByteOrder(StrEnum):
    """Byte order of a multi-register value, A being the most significant byte.

    ``ABCD`` is big-endian words in big-endian order (the Modbus default); ``CDAB`` swaps
    the words (common on meters and PLCs); ``BADC`` swaps the bytes inside each word;
    ``DCBA`` is fully little-endian. For 16-bit values only the byte swap matters.
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusTcpConnection:
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    """Timeout of one request; the device counts as failed when it passes."""
    max_gap: int = 0
    """Unused registers (or bits) a merged read may span to save a request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusPoint(PointBase):
    table: Table
    address: int
    """Zero-based protocol address (register 40001 in vendor tables is address 0)."""
    type: DataType
    order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        return register_count(self.type)


_POINT_REQUIRED = {"name", "table", "address", "type"}
_POINT_OPTIONAL = {"order", "scale", "offset", "interval_s", "unit", "repeat"}


def parse_tcp_device(connection: Cursor, points: Cursor, *, default_interval_s: float
                     ) -> tuple[ModbusTcpConnection, tuple[ModbusPoint, ...]] | None:
    """Validate a ``modbus_tcp`` device; problems go to the cursors' shared list."""
    conn = _parse_tcp_connection(connection)
    parsed = _parse_points(points, default_interval_s=default_interval_s)
    if conn is None or parsed is None:
        return None
    return conn, parsed


def _parse_tcp_connection(cur: Cursor) -> ModbusTcpConnection | None:
    keys = cur.mapping(required={"host"}, optional={"port", "unit_id", "timeout_s", "max_gap"})
    if keys is None:
        return None
    values = {
        "host": keys["host"].str() if "host" in keys else MISSING,
        "port": keys["port"].int(minimum=1, maximum=65535) if "port" in keys else 502,
        # 0 and 248-255 are legal on TCP (gateways route by unit id), so allow the full byte.
        "unit_id": keys["unit_id"].int(minimum=0, maximum=255) if "unit_id" in keys else 1,
        "timeout_s": keys["timeout_s"].float(minimum=0.01, maximum=60)
        if "timeout_s" in keys else 1.0,
        "max_gap": keys["max_gap"].int(minimum=0, maximum=MAX_REGISTERS_PER_READ - 2)
        if "max_gap" in keys else 0,
    }
    if MISSING in values.values():
        return None
    return ModbusTcpConnection(**values)


def _parse_points(cur: Cursor, *, default_interval_s: float) -> tuple[ModbusPoint, ...] | None:
    out: list[ModbusPoint] = []
    seen: dict[str, str] = {}
    ok = True
    for _, item in cur.items():
        points = _parse_point(item, default_interval_s=default_interval_s)
        if points is None:
            ok = False
            continue
        for point in points:
            if point.name in seen:
                item.error(f"point name {point.name!r} is already used by {seen[point.name]}")
                ok = False
                continue
            seen[point.name] = item.path
            out.append(point)
    if ok and not out and cur.node is not None:
        cur.error("no points configured: add at least one point")
        ok = False
    return tuple(out) if ok else None


def _parse_point(cur: Cursor, *, default_interval_s: float) -> list[ModbusPoint] | None:
    keys = cur.mapping(required=_POINT_REQUIRED, optional=_POINT_OPTIONAL)
    if keys is None:
        return None
    name = keys["name"].str() if "name" in keys else MISSING
    if name is not MISSING and any(c in name for c in "/+#\"\\") :
        keys["name"].error(f"{name!r} may not contain / + # \" or \\")
        name = MISSING
    table = keys["table"].enum(Table) if "table" in keys else MISSING
    address = keys["address"].int(minimum=0, maximum=65535) if "address" in keys else MISSING
    data_type = keys["type"].enum(DataType) if "type" in keys else MISSING
    order = keys["order"].enum(ByteOrder) if "order" in keys else ByteOrder.ABCD
    scale = keys["scale"].float() if "scale" in keys else 1.0
    offset = keys["offset"].float() if "offset" in keys else 0.0
    interval_s = (keys["interval_s"].float(minimum=0.001, maximum=86400)
                  if "interval_s" in keys else default_interval_s)
    unit = keys["unit"].str() if "unit" in keys else None
    repeat = keys["repeat"].int(minimum=1, maximum=65536) if "repeat" in keys else 1
    values: list[Any] = [name, table, address, data_type, order, scale, offset, interval_s,
                         unit, repeat]
    if MISSING in values:
        return None
    if table in BIT_TABLES and data_type is not DataType.BOOL:
        keys["type"].error(f"{table.value} points hold single bits: type must be 'bool', "
                           f"not {data_type.value!r}")
        return None
    if table not in BIT_TABLES and data_type is DataType.BOOL:
        keys["type"].error(f"{table.value} registers are 16-bit: use int16/uint16/int32/"
                           "uint32/float32 (bits inside a register come with issue #3)")
        return None
    width = register_count(data_type)
    limit = 65536
    end = address + width * repeat
    if end > limit:
        keys["address"].error(f"address {address} + {width * repeat} "
                              f"{'bits' if table in BIT_TABLES else 'registers'} "
                              f"runs past the last address 65535")
        return None
    if repeat == 1:
        names = [name]
    else:
        names = [f"{name}_{i}" for i in range(repeat)]
    return [ModbusPoint(name=n, table=table, address=address + i * width, type=data_type,
                        order=order, scale=scale, offset=offset, interval_s=interval_s,
                        unit=unit) for i, n in enumerate(names)]
