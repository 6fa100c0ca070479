"""Decoding and encoding of Modbus register blocks. Pure: no I/O, no pymodbus.

A read returns one block of registers (or bits); :func:`compile_block` turns the points of
that block into a decoder that converts the whole block in a handful of C-level calls, so
the per-reading cost is the value object itself:

1. when a point needs byte-swapped words (``BADC``/``DCBA``), one ``struct`` round trip
   byte-swaps every register of the block and appends the copy after the originals;
2. one ``operator.itemgetter`` gathers the words of every point in value order (this also
   reorders ``CDAB``/``DCBA`` words, skips gaps and repeats overlapped registers);
3. one ``struct.pack``/``struct.unpack`` pair with a format compiled for the block turns
   the words into the point values, in point order;
4. one ``sum`` tells whether any float32 is non-finite (float32 values cannot overflow a
   float64 sum), and only then are NaN/inf replaced by ``None``;
5. scale and offset are applied only to the points that have them.

Blocks of plain ``uint16`` points skip the struct round trip; contiguous ones skip the
gather too.

Register words follow pymodbus: ints 0..65535, the first register of a value first. With
the value's big-endian bytes ``A B C D`` a ``float32`` is stored as ``AB CD`` (``ABCD``),
``CD AB`` (``CDAB``), ``BA DC`` (``BADC``) or ``DC BA`` (``DCBA``); a 16-bit value as
``AB`` or, for ``BADC``/``DCBA``, byte-swapped as ``BA``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from edge_agent.drivers.modbus.config import ByteOrder, DataType, ModbusPoint

__all__ = ["BlockDecoder", "compile_block", "encode_value"]

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
}
_SWAPPED_BYTES = frozenset({ByteOrder.BADC, ByteOrder.DCBA})
_SWAPPED_WORDS = frozenset({ByteOrder.CDAB, ByteOrder.DCBA})
_isfinite = math.isfinite


def _gatherer(indexes: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``itemgetter`` that always returns a tuple (it returns a bare item for one index)."""
    if len(indexes) == 1:
        only = indexes[0]
        return lambda seq: (seq[only],)
    getter: Callable[[Sequence[Any]], tuple[Any, ...]] = itemgetter(*indexes)
    return getter


def _scaling(points: Sequence[ModbusPoint]) -> tuple[tuple[int, float, float], ...]:
    return tuple((i, p.scale, p.offset) for i, p in enumerate(points)
                 if p.scale != 1.0 or p.offset != 0.0)


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
    if all(p.type is DataType.BOOL for p in points):
        return _compile_bits(offsets)
    if any(p.type is DataType.BOOL for p in points):
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
        if point.width == 1:
            words.append(base)
        elif point.order in _SWAPPED_WORDS:
            words += (base + 1, base)
        else:
            words += (base, base + 1)
        fmt.append(_FORMAT[point.type])
    scaled = _scaling(points)
    has_float = any(p.type is DataType.FLOAT32 for p in points)
    plain_uint16 = not swap and all(p.type is DataType.UINT16 for p in points)

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
        if has_float and not _isfinite(sum(values)):
            out = [v if _isfinite(v) else None for v in values]
        else:
            out = list(values)
        for i, scale, offset in scaled:
            v = out[i]
            if v is not None:
                out[i] = v * scale + offset
        return out

    return decode


def encode_value(point: ModbusPoint, value: float | int | bool) -> list[int]:
    """Registers (or, for ``bool``, one 0/1 bit) that make a device read back ``value``.

    The inverse of decoding: scale and offset are undone first, integers are rounded to
    the nearest value. Raises ``ValueError`` when the value does not fit the point's type.
    """
    if point.type is DataType.BOOL:
        return [1 if value else 0]
    raw: float | int = value
    if point.scale != 1.0 or point.offset != 0.0:
        if point.scale == 0.0:
            raise ValueError(f"{point.name}: a point with scale 0 cannot be written")
        raw = (value - point.offset) / point.scale
    if point.type is not DataType.FLOAT32:
        if not _isfinite(raw):
            raise ValueError(f"{point.name}: {value!r} is not a finite number")
        raw = round(raw)
    try:
        data = struct.pack(">" + _FORMAT[point.type], raw)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{point.name}: {value!r} does not fit {point.type.value}") from exc
    if point.order in _SWAPPED_BYTES:
        data = data[1::-1] + data[:1:-1] if len(data) == 4 else data[::-1]
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    if point.order in _SWAPPED_WORDS and len(words) == 2:
        words.reverse()
    return words
