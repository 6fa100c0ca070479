"""Modbus device configuration: connection settings and register points.

Validation only; nothing here imports pymodbus, so ``edge-agent validate`` stays cheap.
Three driver kinds share the point syntax and differ by connection:

* ``modbus_tcp``: Modbus TCP (MBAP framing) to ``host:port``;
* ``modbus_rtu``: Modbus RTU on a serial port (RS-485), several unit ids per port;
* ``modbus_rtu_over_tcp``: RTU frames carried over TCP (serial device servers).

Devices that share a serial port or a TCP endpoint share one connection (a *bus*); the
cross-device rules (one set of line settings per serial port, unique unit ids per bus) are
checked by :func:`check_devices` once every device is parsed.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import yaml

from edge_agent.config.model import PointBase
from edge_agent.config.nodes import MISSING, Cursor

__all__ = [
    "BIT_TABLES",
    "INTEGER_TYPES",
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "MAX_REGISTERS_PER_WRITE",
    "STANDARD_BAUDRATES",
    "ByteOrder",
    "DataType",
    "ModbusConnection",
    "ModbusPoint",
    "ModbusRtuConnection",
    "ModbusRtuOverTcpConnection",
    "ModbusTcpConnection",
    "Parity",
    "Table",
    "WriteFunction",
    "bus_key",
    "check_devices",
    "parse_rtu_device",
    "parse_rtu_over_tcp_device",
    "parse_tcp_device",
    "register_count",
]

MAX_REGISTERS_PER_READ = 125
"""Modbus limit for function codes 3 and 4 (Modbus Application Protocol v1.1b3, 6.3/6.4)."""
MAX_BITS_PER_READ = 2000
"""Modbus limit for function codes 1 and 2."""
MAX_REGISTERS_PER_WRITE = 123
"""Modbus limit for function code 16."""
STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)


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
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


INTEGER_TYPES = frozenset({DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32,
                           DataType.INT64, DataType.UINT64})
_NUMBER_TYPES = INTEGER_TYPES | {DataType.FLOAT32, DataType.FLOAT64}

_REGISTERS = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
    DataType.STRING: 1,
}


def register_count(data_type: DataType) -> int:
    """Registers (or bits, for ``bool``) one value of ``data_type`` occupies (per register
    of ``count`` for strings)."""
    return _REGISTERS[data_type]


class ByteOrder(StrEnum):
    """Byte order of a multi-register value, A being the most significant byte.

    ``ABCD`` is big-endian words in big-endian order (the Modbus default); ``CDAB`` swaps
    the words (common on meters and PLCs); ``BADC`` swaps the bytes inside each word;
    ``DCBA`` is fully little-endian. For 16-bit values only the byte swap matters. For
    64-bit values the same names mean the same operations: ``ABCD`` = ``ABCDEFGH``,
    ``CDAB`` = ``GHEFCDAB`` (word order reversed), ``BADC`` = ``BADCFEHG`` (bytes swapped in
    each word), ``DCBA`` = ``HGFEDCBA`` (little-endian). Strings use ``ABCD`` (first
    character in the high byte) or ``BADC`` (first character in the low byte).
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class Parity(StrEnum):
    NONE = "none"
    EVEN = "even"
    ODD = "odd"


class WriteFunction(StrEnum):
    """How single values are written: ``auto`` uses function 6 (5 for a coil) for one
    register and 16 for several; ``multiple`` always uses 16 (15), for devices that reject
    the single-write functions."""

    AUTO = "auto"
    MULTIPLE = "multiple"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusTcpConnection:
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    """Timeout of one request; the device counts as failed when it passes."""
    max_gap: int = 0
    """Unused registers (or bits) a merged read may span to save a request."""
    write_function: WriteFunction = WriteFunction.AUTO


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusRtuOverTcpConnection:
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    max_gap: int = 0
    write_function: WriteFunction = WriteFunction.AUTO
    baudrate: int | None = None
    """Baud rate of the RS-485 line behind the device server, when known: sets the silent
    interval kept between frames and the line-time figures (1.75 ms gap when unknown)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusRtuConnection:
    port: str
    """Serial device, such as ``/dev/ttyUSB0`` (or a pyserial URL)."""
    baudrate: int = 9600
    parity: Parity = Parity.NONE
    stopbits: int = 1
    bytesize: int = 8
    unit_id: int = 1
    timeout_s: float = 1.0
    max_gap: int = 0
    write_function: WriteFunction = WriteFunction.AUTO


ModbusConnection = ModbusTcpConnection | ModbusRtuOverTcpConnection | ModbusRtuConnection


def bus_key(connection: ModbusConnection) -> str:
    """Name of the shared connection a device uses: devices with the same key share it."""
    if isinstance(connection, ModbusRtuConnection):
        return f"serial:{connection.port}"
    scheme = "rtu+tcp" if isinstance(connection, ModbusRtuOverTcpConnection) else "tcp"
    return f"{scheme}://{connection.host}:{connection.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusPoint(PointBase):
    table: Table
    address: int
    """Zero-based protocol address (register 40001 in vendor tables is address 0)."""
    type: DataType
    order: ByteOrder = ByteOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = None
    """For ``bool`` points on a register table: the bit of the register, 0 = least
    significant."""
    count: int = 1
    """Registers of a ``string`` point (two characters each)."""
    enum: tuple[tuple[int, str], ...] | None = None
    """Integer value -> name; the reading is the name (the number as text if unmapped)."""
    bits: tuple[tuple[int, str], ...] | None = None
    """Bit number -> name; the reading is the names of the set bits, comma-joined."""
    merge_group: str | None = None
    """``None``: merged freely with the device's other points; otherwise only with points
    of the same group (``merge: false`` on a point entry)."""
    scale_factor: ModbusPoint | None = None
    """The plain ``int16`` point holding this point's power-of-ten exponent (a SunSpec
    ``sunssf``): the reading is raw x 10^sf x scale + offset. The planner reads it in every
    poll that reads this point."""
    published: bool = True
    """``False`` for a point named as another point's ``scale_factor``: it is read with the
    points that use it and never published on its own."""

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return self.count if self.type is DataType.STRING else _REGISTERS[self.type]

    @property
    def in_register(self) -> bool:
        """A single bit inside a holding or input register."""
        return self.type is DataType.BOOL and self.table not in BIT_TABLES


# -- parsing ------------------------------------------------------------------------------

_POINT_REQUIRED = {"name", "table", "address", "type"}
_POINT_OPTIONAL = {"order", "scale", "offset", "interval_s", "unit", "repeat", "bit", "count",
                   "enum", "bits", "merge", "scale_factor"}
_COMMON_CONNECTION = {"unit_id", "timeout_s", "max_gap", "write_function"}

Parsed = tuple[Any, tuple[ModbusPoint, ...]]


def parse_tcp_device(connection: Cursor, points: Cursor, *, default_interval_s: float
                     ) -> tuple[ModbusTcpConnection, tuple[ModbusPoint, ...]] | None:
    """Validate a ``modbus_tcp`` device; problems go to the cursors' shared list."""
    keys = connection.mapping(required={"host"}, optional={"port"} | _COMMON_CONNECTION)
    conn = None
    if keys is not None:
        # 0 and 248-255 are legal on TCP (gateways route by unit id), so allow the full byte.
        values = _common(keys, unit_min=0, unit_max=255)
        values["host"] = keys["host"].str() if "host" in keys else MISSING
        values["port"] = _port(keys, 502)
        if MISSING not in values.values():
            conn = ModbusTcpConnection(**values)
    return _finish(conn, points, default_interval_s)


def parse_rtu_over_tcp_device(connection: Cursor, points: Cursor, *, default_interval_s: float
                              ) -> tuple[ModbusRtuOverTcpConnection,
                                         tuple[ModbusPoint, ...]] | None:
    """Validate a ``modbus_rtu_over_tcp`` device (RTU frames to a serial device server)."""
    keys = connection.mapping(required={"host"},
                              optional={"port", "baudrate"} | _COMMON_CONNECTION)
    conn = None
    if keys is not None:
        values = _common(keys, unit_min=0, unit_max=255)
        values["host"] = keys["host"].str() if "host" in keys else MISSING
        values["port"] = _port(keys, 502)
        values["baudrate"] = _baudrate(keys["baudrate"]) if "baudrate" in keys else None
        if MISSING not in values.values():
            conn = ModbusRtuOverTcpConnection(**values)
    return _finish(conn, points, default_interval_s)


def parse_rtu_device(connection: Cursor, points: Cursor, *, default_interval_s: float
                     ) -> tuple[ModbusRtuConnection, tuple[ModbusPoint, ...]] | None:
    """Validate a ``modbus_rtu`` device on a serial port (unit ids 1..247)."""
    keys = connection.mapping(required={"port", "unit_id"},
                              optional={"baudrate", "parity", "stopbits", "bytesize"}
                              | _COMMON_CONNECTION)
    conn = None
    if keys is not None:
        # 0 is the broadcast address (no answer) and 248..255 are reserved on serial lines.
        values = _common(keys, unit_min=1, unit_max=247)
        values["port"] = keys["port"].str() if "port" in keys else MISSING
        values["baudrate"] = _baudrate(keys["baudrate"]) if "baudrate" in keys else 9600
        values["parity"] = keys["parity"].enum(Parity) if "parity" in keys else Parity.NONE
        values["stopbits"] = _choice(keys, "stopbits", (1, 2), 1)
        values["bytesize"] = _choice(keys, "bytesize", (7, 8), 8)
        if MISSING not in values.values():
            conn = ModbusRtuConnection(**values)
    return _finish(conn, points, default_interval_s)


def _finish(conn: Any, points: Cursor, default_interval_s: float) -> Parsed | None:
    parsed = _parse_points(points, default_interval_s=default_interval_s)
    if conn is None or parsed is None:
        return None
    return conn, parsed


def _common(keys: dict[str, Cursor], *, unit_min: int, unit_max: int) -> dict[str, Any]:
    return {
        "unit_id": keys["unit_id"].int(minimum=unit_min, maximum=unit_max)
        if "unit_id" in keys else 1,
        "timeout_s": keys["timeout_s"].float(minimum=0.01, maximum=60)
        if "timeout_s" in keys else 1.0,
        "max_gap": keys["max_gap"].int(minimum=0, maximum=MAX_REGISTERS_PER_READ - 2)
        if "max_gap" in keys else 0,
        "write_function": keys["write_function"].enum(WriteFunction)
        if "write_function" in keys else WriteFunction.AUTO,
    }


def _port(keys: dict[str, Cursor], default: int) -> Any:
    return keys["port"].int(minimum=1, maximum=65535) if "port" in keys else default


def _baudrate(cur: Cursor) -> Any:
    value = cur.int(minimum=1)
    if value is not MISSING and value not in STANDARD_BAUDRATES:
        cur.error(f"{value} is not a standard baud rate "
                  f"({', '.join(map(str, STANDARD_BAUDRATES))})")
        return MISSING
    return value


def _choice(keys: dict[str, Cursor], key: str, choices: tuple[int, ...], default: int) -> Any:
    if key not in keys:
        return default
    value = keys[key].int()
    if value is not MISSING and value not in choices:
        keys[key].error(f"{value} is not one of {', '.join(map(str, choices))}")
        return MISSING
    return value


def _parse_points(cur: Cursor, *, default_interval_s: float) -> tuple[ModbusPoint, ...] | None:
    out: list[ModbusPoint] = []
    seen: dict[str, Cursor] = {}
    entries: list[_Entry] = []
    failed: list[str] = []
    ok = True
    for _, item in cur.items():
        parsed = _parse_point(item, default_interval_s=default_interval_s)
        if parsed is None:
            ok = False
            failed.append(_declared_name(item))
            continue
        points, keys, scale_factor = parsed
        entries.append(_Entry(item, keys, tuple(p.name for p in points), scale_factor))
        for point in points:
            if point.name in seen:
                item.error(f"point name {point.name!r} is already used by "
                           f"{seen[point.name].path}")
                ok = False
                continue
            seen[point.name] = item
            out.append(point)
    if ok and not out and cur.node is not None:
        cur.error("no points configured: add at least one point")
        ok = False
    if any(e.scale_factor is not None for e in entries):
        linked = _link_scale_factors(out, entries, failed=failed)
        ok = ok and linked is not None
        out = linked or out
    return tuple(out) if ok else None


@dataclass(frozen=True, slots=True)
class _Entry:
    """One point entry as parsed: where it is and the names of the points it made."""

    item: Cursor
    keys: dict[str, Cursor]
    names: tuple[str, ...]
    scale_factor: str | None

    @property
    def where(self) -> str:
        """``points[4], line 30``: the entry, short."""
        return f"{self.item.path.rsplit('.', 1)[-1]}, line {self.item.line}"


def _declared_name(item: Cursor) -> str:
    """The ``name`` written in a point entry that failed validation ("" if none)."""
    if isinstance(item.node, yaml.MappingNode):
        for key, value in item.node.value:
            if key.value == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return ""


def _link_scale_factors(points: list[ModbusPoint], entries: list[_Entry], *,
                        failed: Sequence[str]) -> list[ModbusPoint] | None:
    """Resolve ``scale_factor`` names. A point used as a scale factor leaves the list of
    published points and is embedded (``published=False``) in each point that uses it, so
    the planner reads it in the same poll as them. ``failed``: names of the entries that
    did not validate (a reference to one is not reported as unknown)."""
    by_name = {p.name: p for p in points}
    entry_of = {name: e for e in entries for name in e.names}
    ok = True
    factors: dict[str, _Entry] = {}
    for entry in entries:
        name = entry.scale_factor
        if name is None:
            continue
        cur = entry.keys["scale_factor"]
        target = by_name.get(name)
        if name in entry.names:
            cur.error("a point cannot be its own scale factor")
        elif target is None:
            if not any(name == f or name.startswith(f"{f}_") for f in failed if f):
                hint = difflib.get_close_matches(name, sorted(by_name), n=1, cutoff=0.7)
                cur.error(f"no point {name!r} on this device"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        elif (chained := entry_of[name].scale_factor) is not None:
            cur.error(f"circular reference: {name!r} takes its scale factor from "
                      f"{chained!r}" if chained in entry.names else
                      f"{name!r} ({entry_of[name].where}) has a scale_factor of its own: "
                      "scale factors do not chain")
        elif (why := _not_plain_int16(target)) is not None:
            cur.error(f"scale factor point {name!r} ({entry_of[name].where}) {why}: a scale "
                      "factor must be a plain int16 (SunSpec sunssf)")
        else:
            factors[name] = entry_of[name]
            continue
        ok = False
    for entry in {id(e): e for e in factors.values()}.values():
        if not all(n in factors for n in entry.names):
            continue  # a repeat entry partly published: its keys apply to those points
        # Read in the poll of each point that uses it and never published: these would
        # promise what does not happen.
        if "interval_s" in entry.keys:
            entry.keys["interval_s"].error(
                "'interval_s' does not apply to a scale factor point: it is read in the same "
                "poll as each point that uses it")
            ok = False
        if "unit" in entry.keys:
            entry.keys["unit"].error("'unit' does not apply to a scale factor point: it is "
                                     "not published")
            ok = False
    if not ok:
        return None
    hidden = {name: replace(by_name[name], published=False) for name in factors}
    scale_factor_of = {name: e.scale_factor for e in entries for name in e.names}
    return [replace(p, scale_factor=hidden[sf]) if (sf := scale_factor_of[p.name]) else p
            for p in points if p.name not in hidden]


def _not_plain_int16(point: ModbusPoint) -> str | None:
    if point.type is not DataType.INT16:
        return f"is {point.type.value}"
    extras = [key for key, present in (("scale", point.scale != 1.0),
                                       ("offset", point.offset != 0.0),
                                       ("enum", point.enum is not None),
                                       ("bits", point.bits is not None)) if present]
    return f"has {' and '.join(extras)}" if extras else None


def _int_mapping(cur: Cursor, *, minimum: int, maximum: int) -> Any:
    """A mapping of whole numbers to non-empty names (``{0: off, 1: on}``)."""
    if not isinstance(cur.node, yaml.MappingNode) or not cur.node.value:
        cur.error("expected a mapping of numbers to names, such as {0: stopped, 1: running}")
        return MISSING
    out: dict[int, str] = {}
    ok = True
    for key_node, value_node in cur.node.value:
        key = Cursor(key_node, f"{cur.path}.{getattr(key_node, 'value', '?')}", cur.problems)
        number = key.int(minimum=minimum, maximum=maximum)
        # The text as written: YAML 1.1 would turn names such as off/on/yes into booleans.
        name = value_node.value if isinstance(value_node, yaml.ScalarNode) \
            and value_node.value else Cursor(value_node, key.path, cur.problems).str()
        if number is MISSING or name is MISSING:
            ok = False
            continue
        if number in out:
            key.error(f"{number} is mapped twice")
            ok = False
            continue
        if "," in name:
            key.error(f"{name!r}: names may not contain commas")
            ok = False
            continue
        out[number] = name
    return tuple(sorted(out.items())) if ok else MISSING


def _parse_point(cur: Cursor, *, default_interval_s: float
                 ) -> tuple[list[ModbusPoint], dict[str, Cursor], str | None] | None:
    """The points of one entry (several with ``repeat``), its keys and the name of its
    ``scale_factor`` point (resolved once the device's every point is known)."""
    keys = cur.mapping(required=_POINT_REQUIRED, optional=_POINT_OPTIONAL)
    if keys is None:
        return None
    name = keys["name"].str() if "name" in keys else MISSING
    if name is not MISSING and any(c in name for c in "/+#\"\\"):
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
    bit = keys["bit"].int(minimum=0, maximum=15) if "bit" in keys else None
    count = keys["count"].int(minimum=1, maximum=MAX_REGISTERS_PER_READ) \
        if "count" in keys else None
    enum = _int_mapping(keys["enum"], minimum=-(2**63), maximum=2**64 - 1) \
        if "enum" in keys else None
    bits = _int_mapping(keys["bits"], minimum=0, maximum=63) if "bits" in keys else None
    merge = keys["merge"].bool() if "merge" in keys else True
    scale_factor = keys["scale_factor"].str() if "scale_factor" in keys else None
    values: list[Any] = [name, table, address, data_type, order, scale, offset, interval_s,
                         unit, repeat, bit, count, enum, bits, merge, scale_factor]
    if MISSING in values:
        return None
    if not _check_type_keys(keys, table, data_type):
        return None
    width: int = (count or 1) if data_type is DataType.STRING else register_count(data_type)
    if bits is not None and max(b for b, _ in bits) >= 16 * width:
        keys["bits"].error(f"bit {max(b for b, _ in bits)} is outside a {data_type.value} "
                           f"(bits 0..{16 * width - 1})")
        return None
    end = address + width * repeat
    if end > 65536:
        keys["address"].error(f"address {address} + {width * repeat} "
                              f"{'bits' if table in BIT_TABLES else 'registers'} "
                              f"runs past the last address 65535")
        return None
    names = [name] if repeat == 1 else [f"{name}_{i}" for i in range(repeat)]
    return [ModbusPoint(name=n, table=table, address=address + i * width, type=data_type,
                        order=order, scale=scale, offset=offset, interval_s=interval_s,
                        unit=unit, bit=bit, count=count or 1, enum=enum, bits=bits,
                        merge_group=None if merge else name)
            for i, n in enumerate(names)], keys, scale_factor


def _check_type_keys(keys: dict[str, Cursor], table: Table, data_type: DataType) -> bool:
    """Which keys go with which table and type; one problem per misplaced key."""
    ok = True

    def refuse(key: str, message: str) -> None:
        nonlocal ok
        if key in keys:
            keys[key].error(message)
            ok = False

    if table in BIT_TABLES and data_type is not DataType.BOOL:
        keys["type"].error(f"{table.value} points hold single bits: type must be 'bool', "
                           f"not {data_type.value!r}")
        return False
    if data_type is DataType.BOOL:
        if table in BIT_TABLES:
            refuse("bit", f"{table.value} points are single bits already: remove 'bit'")
        elif "bit" not in keys:
            keys["type"].error(f"a bool point on {table.value} registers needs 'bit' "
                               "(0..15, 0 = least significant)")
            ok = False
        for key in ("order", "scale", "offset", "enum", "bits"):
            refuse(key, f"'{key}' does not apply to bool points")
    else:
        refuse("bit", "'bit' applies only to type bool on holding/input registers")
    if data_type is DataType.STRING:
        if "count" not in keys:
            keys["type"].error("a string point needs 'count' (registers, two characters each)")
            ok = False
        if "order" in keys and keys["order"].enum(ByteOrder) in (ByteOrder.CDAB, ByteOrder.DCBA):
            keys["order"].error("strings are ABCD (first character in the high byte) or "
                                "BADC (in the low byte)")
            ok = False
        for key in ("scale", "offset", "enum", "bits"):
            refuse(key, f"'{key}' does not apply to string points")
    else:
        refuse("count", "'count' applies only to type string; use 'repeat' for several values")
    if data_type not in INTEGER_TYPES:
        refuse("scale_factor", f"'scale_factor' needs an integer type (SunSpec int16, "
               f"uint16, int32, uint32, acc), not {data_type.value}")
        if data_type in _NUMBER_TYPES:
            refuse("enum", f"'enum' needs an integer type, not {data_type.value}")
            refuse("bits", f"'bits' needs an integer type, not {data_type.value}")
    else:
        if "enum" in keys and "bits" in keys:
            keys["bits"].error("a point maps either 'enum' or 'bits', not both")
            ok = False
        for key in ("scale", "offset", "scale_factor"):
            if key in keys and ("enum" in keys or "bits" in keys):
                keys[key].error(f"'{key}' does not apply to enum/bits points")
                ok = False
    return ok


# -- rules across devices -----------------------------------------------------------------

def check_devices(devices: Sequence[Any]) -> list[tuple[int, str]]:
    """Rules across the devices of one Modbus kind: devices on one serial port agree on
    its line settings, and unit ids are unique per bus (port or endpoint)."""
    problems: list[tuple[int, str]] = []
    first_on_bus: dict[str, tuple[str, ModbusConnection]] = {}
    units: dict[tuple[str, int], str] = {}
    for index, device in enumerate(devices):
        conn = device.connection
        key = bus_key(conn)
        where = key.removeprefix("serial:")
        if key in first_on_bus and isinstance(conn, ModbusRtuConnection):
            other_name, other = first_on_bus[key]
            assert isinstance(other, ModbusRtuConnection)
            if _line(conn) != _line(other):
                problems.append((index, f"devices on serial port {where} must share its "
                                 f"line settings (baudrate/parity/stopbits/bytesize): device "
                                 f"{other_name!r} uses {_line_text(other)}, this one "
                                 f"{_line_text(conn)}"))
        first_on_bus.setdefault(key, (device.name, conn))
        unit = (key, conn.unit_id)
        if unit in units:
            problems.append((index, f"unit_id {conn.unit_id} on {where} is already used by "
                             f"device {units[unit]!r}"))
        else:
            units[unit] = device.name
    return problems


def _line(conn: ModbusRtuConnection) -> tuple[int, Parity, int, int]:
    return conn.baudrate, conn.parity, conn.stopbits, conn.bytesize


def _line_text(conn: ModbusRtuConnection) -> str:
    return f"{conn.baudrate}/{conn.parity.value}/{conn.stopbits}/{conn.bytesize}"
