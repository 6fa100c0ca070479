"""Decoding and encoding of Modbus register blocks. Pure: no I/O, no pymodbus.

A read returns one block of registers (or bits); :func:`compile_block` turns the points of
that block into a decoder that converts the whole block in a handful of C-level calls, so
the per-reading cost is the value object itself:

1. when a point needs byte-swapped words (``BADC``/``DCBA``), one ``struct`` round trip
   byte-swaps every register of the block and appends the copy after the originals;
2. one ``operator.itemgetter`` gathers the words of every point in value order (this also
   reorders ``CDAB``/``DCBA`` words, skips gaps and repeats overlapped registers);
3. one ``struct.pack``/``struct.unpack`` pair with a format compiled for the block turns
   the words into the point values, in point order (strings come out as ``bytes``);
4. one ``sum`` tells whether any float is non-finite, and only then are NaN/inf replaced
   by ``None`` (a float64 sum may overflow: that only sends the block down the exact path);
5. scale and offset are applied only to the points that have them (a result that
   overflows to infinity is ``None``); bits inside registers, strings, enumerations and
   bitfields are converted only for the points that are such.

Points with a SunSpec ``scale_factor`` come out raw: their exponent may be in another
block of the same poll, so :func:`apply_scale_factors` scales them once the poll's blocks
are decoded (raw x 10^sf, then scale and offset).

Blocks of plain ``uint16`` points skip the struct round trip; contiguous ones skip the
gather too.

Register words follow pymodbus: ints 0..65535, the first register of a value first. With
the value's big-endian bytes ``A B C D`` a 32-bit value is stored as ``AB CD`` (``ABCD``),
``CD AB`` (``CDAB``), ``BA DC`` (``BADC``) or ``DC BA`` (``DCBA``); a 16-bit value as
``AB`` or, for ``BADC``/``DCBA``, byte-swapped as ``BA``. A 64-bit value ``A..H`` follows
the same rules per word: ``ABCD`` = ``AB CD EF GH``, ``CDAB`` = ``GH EF CD AB``, ``BADC`` =
``BA DC FE HG``, ``DCBA`` = ``HG FE DC BA``.

Value shapes (all JSON scalars, as the telemetry contract wants): ``bool`` for bits,
``int`` for integers, ``float`` for floats and scaled values, ``str`` for strings, enum
names (an unmapped value gives its number as text, ``"7"``) and bitfields (names of the set
bits in ascending bit order joined by commas, ``"fault,door_open"``; ``""`` when no bit is
set; a set bit without a name gives ``bitN``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from edge_agent.drivers.modbus.config import (
    BIT_TABLES,
    INTEGER_TYPES,
    ByteOrder,
    DataType,
    ModbusPoint,
)

__all__ = ["NOT_IMPLEMENTED", "SCALE_FACTOR_LIMIT", "BlockDecoder", "ScaledPoint",
           "apply_scale_factors", "compile_block", "decode_string", "encode_value",
           "scaled_point", "set_bit"]

BlockDecoder = Callable[[Sequence[Any]], list[Any]]
"""Turns the registers (or bits) of one block into the values of its points, in point
order. Raises ``struct.error``, ``IndexError`` or ``TypeError`` on a block of the wrong
length."""

_FORMAT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT64: "d",
    DataType.BOOL: "H",  # a bit inside a register: the register, then the bit is taken
}
_FLOATS = frozenset({DataType.FLOAT32, DataType.FLOAT64})
_SWAPPED_BYTES = frozenset({ByteOrder.BADC, ByteOrder.DCBA})
_SWAPPED_WORDS = frozenset({ByteOrder.CDAB, ByteOrder.DCBA})
_isfinite = math.isfinite

Converter = Callable[[Any], Any]


def _gatherer(indexes: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``itemgetter`` that always returns a tuple (it returns a bare item for one index)."""
    if len(indexes) == 1:
        only = indexes[0]
        return lambda seq: (seq[only],)
    getter: Callable[[Sequence[Any]], tuple[Any, ...]] = itemgetter(*indexes)
    return getter


def _scaling(points: Sequence[ModbusPoint]) -> tuple[tuple[int, float, float], ...]:
    return tuple((i, p.scale, p.offset) for i, p in enumerate(points)
                 if p.scale_factor is None and (p.scale != 1.0 or p.offset != 0.0))


# -- SunSpec scale factors ----------------------------------------------------------------

NOT_IMPLEMENTED = {
    DataType.INT16: -0x8000,
    DataType.UINT16: 0xFFFF,
    DataType.INT32: -0x8000_0000,
    DataType.UINT32: 0xFFFF_FFFF,
    DataType.INT64: -0x8000_0000_0000_0000,
    DataType.UINT64: 0xFFFF_FFFF_FFFF_FFFF,
}
"""SunSpec's "not implemented" value of each integer type (``sunssf`` too: -32768). The
accumulators (``acc16``/``acc32``/``acc64``) mark it with 0, which cannot be told from a
counter at zero: it reads as 0."""
SCALE_FACTOR_LIMIT = 10
"""SunSpec scale factors range over -10..10; any other exponent is invalid."""
_POWERS = tuple(10.0 ** e for e in range(SCALE_FACTOR_LIMIT + 1))

ScaledPoint = tuple[int, str, float, float, int]
"""A point scaled by a scale factor: its index in the block's values, the name of its
scale factor point, its scale and offset, and its type's "not implemented" value."""


def scaled_point(index: int, point: ModbusPoint) -> ScaledPoint:
    """The :data:`ScaledPoint` of ``point`` (which has a ``scale_factor``) at ``index``."""
    if point.scale_factor is None or point.type not in NOT_IMPLEMENTED:
        raise ValueError(f"{point.name}: only integer points with a scale factor are scaled")
    return (index, point.scale_factor.name, point.scale, point.offset,
            NOT_IMPLEMENTED[point.type])


def apply_scale_factors(values: list[Any], scaled: Iterable[ScaledPoint],
                        factors: Mapping[str, Any]) -> None:
    """Scale the raw integers ``values[index]`` in place: raw x 10^sf x scale + offset, sf
    being ``factors[name]`` (the exponents read in the same poll).

    The value is ``None`` when it is SunSpec's "not implemented" value of its type, or when
    its scale factor is missing (not read), "not implemented" (-32768) or outside
    -10..10. Negative exponents divide by the exact power of ten, so 1234 x 10^-2 is 12.34.
    """
    for i, name, scale, offset, absent in scaled:
        raw = values[i]
        sf = factors.get(name)
        if raw == absent or sf is None or not -SCALE_FACTOR_LIMIT <= sf <= SCALE_FACTOR_LIMIT:
            values[i] = None
            continue
        value = raw / _POWERS[-sf] if sf < 0 else raw * _POWERS[sf]
        if scale != 1.0 or offset != 0.0:
            value = value * scale + offset
            if not _isfinite(value):
                value = None
        values[i] = value


def decode_string(data: bytes) -> str:
    """Text of a string register block: up to the first NUL, trailing spaces dropped.
    Bytes that are not UTF-8 become U+FFFD rather than an error."""
    end = data.find(b"\x00")
    if end >= 0:
        data = data[:end]
    return data.decode("utf-8", "replace").rstrip(" ")


def _bit_converter(bit: int) -> Converter:
    return lambda word: (word >> bit) & 1 == 1


def _enum_converter(mapping: Iterable[tuple[int, str]]) -> Converter:
    names = dict(mapping)
    return lambda raw: names.get(raw) or str(raw)


def _bits_converter(mapping: Iterable[tuple[int, str]], width_bits: int) -> Converter:
    names = [f"bit{b}" for b in range(width_bits)]
    for bit, name in mapping:
        names[bit] = name
    mask = (1 << width_bits) - 1

    def convert(raw: int) -> str:
        raw &= mask  # a signed type: the bit pattern, not the sign
        if not raw:
            return ""
        return ",".join(names[b] for b in range(raw.bit_length()) if raw >> b & 1)

    return convert


def _converter(point: ModbusPoint) -> Converter | None:
    if point.type is DataType.BOOL:
        return _bit_converter(point.bit or 0)
    if point.type is DataType.STRING:
        return decode_string
    if point.enum is not None:
        return _enum_converter(point.enum)
    if point.bits is not None:
        return _bits_converter(point.bits, 16 * point.width)
    return None


def compile_block(points: Sequence[ModbusPoint], start: int) -> BlockDecoder:
    """Build the decoder of a block read from address ``start``.

    ``points`` are all of one table, in the order their values are wanted; they may leave
    gaps and may overlap. A register block must hold exactly the registers from ``start``
    to the end of the last point; a bit block at least that many bits (pymodbus pads bits
    to a multiple of 8).
    """
    if not points:
        raise ValueError("a block needs at least one point")
    offsets = [p.address - start for p in points]
    if min(offsets) < 0:
        raise ValueError(f"point {points[offsets.index(min(offsets))].name!r} is before the "
                         f"block start {start}")
    bit_table = [p.table in BIT_TABLES for p in points]
    if all(bit_table):
        return _compile_bits(offsets)
    if any(bit_table):
        raise ValueError("a block cannot mix bits and registers")
    return _compile_registers(points, offsets)


def _compile_bits(offsets: list[int]) -> BlockDecoder:
    count = max(offsets) + 1
    contiguous = offsets == list(range(count))
    gather = _gatherer(offsets)

    def decode_bits(bits: Sequence[Any]) -> list[Any]:
        if len(bits) < count:
            raise IndexError(f"expected {count} bits, got {len(bits)}")
        return list(bits[:count]) if contiguous else list(gather(bits))

    return decode_bits


def _compile_registers(points: Sequence[ModbusPoint], offsets: list[int]) -> BlockDecoder:
    count = max(o + p.width for o, p in zip(offsets, points, strict=True))
    swap = any(p.order in _SWAPPED_BYTES for p in points)
    words: list[int] = []
    fmt = [">"]
    for offset, point in zip(offsets, points, strict=True):
        base = offset + count if point.order in _SWAPPED_BYTES else offset
        span = range(base, base + point.width)
        if point.type is not DataType.STRING and point.order in _SWAPPED_WORDS:
            words.extend(reversed(span))
        else:
            words.extend(span)
        fmt.append(f"{2 * point.count}s" if point.type is DataType.STRING
                   else _FORMAT[point.type])
    scaled = _scaling(points)
    converters = tuple((i, c) for i, p in enumerate(points)
                       if (c := _converter(p)) is not None)
    float_indexes = tuple(i for i, p in enumerate(points) if p.type in _FLOATS)
    summable = not any(p.type is DataType.STRING for p in points)
    plain_uint16 = not swap and all(p.type is DataType.UINT16 and p.enum is None
                                    and p.bits is None for p in points)

    if plain_uint16 and not scaled:
        if words == list(range(count)):
            # The registers are the values: check the length, copy, done.
            def decode_identity(regs: Sequence[Any]) -> list[Any]:
                if len(regs) != count:
                    raise struct.error(f"expected {count} registers, got {len(regs)}")
                return list(regs)

            return decode_identity
        gather_only = _gatherer(words)
        return lambda regs: list(gather_only(regs))

    gather = None if words == list(range(count)) else _gatherer(words)
    swap_fmt = f">{count}H"
    unswap_fmt = f"<{count}H"
    words_fmt = struct.Struct(f">{len(words)}H")
    values_fmt = struct.Struct("".join(fmt))
    pack, unpack = words_fmt.pack, values_fmt.unpack
    spack, sunpack = struct.pack, struct.unpack

    def decode(regs: Sequence[Any]) -> list[Any]:
        if swap:
            regs = [*regs, *sunpack(unswap_fmt, spack(swap_fmt, *regs))]
        elif len(regs) != count:
            raise struct.error(f"expected {count} registers, got {len(regs)}")
        values = unpack(pack(*(regs if gather is None else gather(regs))))
        out = list(values)
        if float_indexes and not (summable and _isfinite(sum(values))):
            for i in float_indexes:
                if not _isfinite(out[i]):
                    out[i] = None
        for i, convert in converters:
            out[i] = convert(out[i])
        for i, scale, offset in scaled:
            v = out[i]
            if v is not None:
                v = v * scale + offset
                out[i] = v if _isfinite(v) else None
        return out

    return decode


# -- encoding -----------------------------------------------------------------------------

def set_bit(word: int, bit: int, value: bool) -> int:
    """``word`` with ``bit`` set or cleared (read-modify-write of a bit in a register)."""
    return word | (1 << bit) if value else word & ~(1 << bit) & 0xFFFF


def _swap16(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _raw_integer(point: ModbusPoint, value: Any) -> Any:
    """The register value of an enum name or a bitfield given as names."""
    if point.enum is not None and isinstance(value, str):
        by_name = {name: number for number, name in point.enum}
        if value in by_name:
            return by_name[value]
        raise ValueError(f"{point.name}: {value!r} is not one of "
                         f"{', '.join(sorted(by_name))}")
    if point.bits is not None and isinstance(value, str | list | tuple | set | frozenset):
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
        by_name = {name: bit for bit, name in point.bits}
        raw = 0
        for name in names:
            if name == "":
                continue
            if name in by_name:
                raw |= 1 << by_name[name]
            elif isinstance(name, str) and name.startswith("bit") and name[3:].isdigit() \
                    and int(name[3:]) < 16 * point.width:
                raw |= 1 << int(name[3:])
            else:
                raise ValueError(f"{point.name}: no bit named {name!r}")
        if point.type in (DataType.INT16, DataType.INT32, DataType.INT64) \
                and raw >> (16 * point.width - 1):
            raw -= 1 << (16 * point.width)  # the top bit of a signed field is its sign
        return raw
    return value


def encode_value(point: ModbusPoint, value: Any) -> list[int]:
    """Registers (or, for a coil or discrete point, one 0/1 bit) that make a device read
    back ``value``.

    The inverse of decoding: scale and offset are undone first, integers are rounded to
    the nearest value; enum points take a name (or a number), bitfields a comma-joined
    string or a list of names, strings are UTF-8 padded with NULs. A bit inside a register
    has no registers of its own: use :func:`set_bit` on the register read back. A point
    with a ``scale_factor`` needs the exponent read from the device first: pass it with
    ``scale`` multiplied by 10^sf and no ``scale_factor``. Raises ``ValueError`` when the
    value does not fit the point.
    """
    if point.scale_factor is not None:
        raise ValueError(f"{point.name}: the scale factor must be read before encoding")
    if point.type is DataType.BOOL:
        if point.table not in BIT_TABLES:
            raise ValueError(f"{point.name}: a bit inside a register is written with set_bit")
        if not isinstance(value, bool | int):
            raise ValueError(f"{point.name}: expected true or false, got {value!r}")
        return [1 if value else 0]
    if point.type is DataType.STRING:
        return _encode_string(point, value)
    raw: Any = _raw_integer(point, value)
    if isinstance(raw, str) or not isinstance(raw, int | float):
        raise ValueError(f"{point.name}: expected a number, got {value!r}")
    if point.scale != 1.0 or point.offset != 0.0:
        if point.scale == 0.0:
            raise ValueError(f"{point.name}: a point with scale 0 cannot be written")
        raw = (raw - point.offset) / point.scale
    if point.type in INTEGER_TYPES:
        if not _isfinite(raw):
            raise ValueError(f"{point.name}: {value!r} is not a finite number")
        raw = round(raw)
    try:
        data = struct.pack(">" + _FORMAT[point.type], raw)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{point.name}: {value!r} does not fit {point.type.value}") from exc
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    if point.order in _SWAPPED_BYTES:
        words = [_swap16(w) for w in words]
    if point.order in _SWAPPED_WORDS:
        words.reverse()
    return words


def _encode_string(point: ModbusPoint, value: Any) -> list[int]:
    if not isinstance(value, str):
        raise ValueError(f"{point.name}: expected a string, got {value!r}")
    data = value.encode("utf-8")
    size = 2 * point.count
    if len(data) > size:
        raise ValueError(f"{point.name}: {value!r} is {len(data)} bytes, over the "
                         f"{size} of {point.count} registers")
    words = list(struct.unpack(f">{point.count}H", data.ljust(size, b"\x00")))
    if point.order in _SWAPPED_BYTES:
        words = [_swap16(w) for w in words]
    return words
