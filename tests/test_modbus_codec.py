"""Table tests of the Modbus block codec against hand-computed register vectors."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from edge_agent.drivers.modbus.codec import compile_block, encode_value
from edge_agent.drivers.modbus.config import ByteOrder, DataType, ModbusPoint, Table


def point(address: int, type_: DataType, order: ByteOrder = ByteOrder.ABCD, *,
          name: str | None = None, scale: float = 1.0, offset: float = 0.0,
          table: Table = Table.HOLDING) -> ModbusPoint:
    return ModbusPoint(name=name or f"p{address}_{type_.value}_{order.value}",
                       interval_s=1.0, table=table, address=address, type=type_,
                       order=order, scale=scale, offset=offset)


def decode_one(p: ModbusPoint, words: list[int]) -> object:
    return compile_block([p], p.address)(words)[0]


BO = ByteOrder
T = DataType

# (type, order, registers as read, expected value); A is the most significant byte.
VECTORS = [
    # float32 230.5 = 0x43668000
    (T.FLOAT32, BO.ABCD, [0x4366, 0x8000], 230.5),
    (T.FLOAT32, BO.CDAB, [0x8000, 0x4366], 230.5),
    (T.FLOAT32, BO.BADC, [0x6643, 0x0080], 230.5),
    (T.FLOAT32, BO.DCBA, [0x0080, 0x6643], 230.5),
    # int32 -2 = 0xFFFFFFFE
    (T.INT32, BO.ABCD, [0xFFFF, 0xFFFE], -2),
    (T.INT32, BO.CDAB, [0xFFFE, 0xFFFF], -2),
    (T.INT32, BO.BADC, [0xFFFF, 0xFEFF], -2),
    (T.INT32, BO.DCBA, [0xFEFF, 0xFFFF], -2),
    # uint32 0xDEADBEEF
    (T.UINT32, BO.ABCD, [0xDEAD, 0xBEEF], 0xDEADBEEF),
    (T.UINT32, BO.CDAB, [0xBEEF, 0xDEAD], 0xDEADBEEF),
    (T.UINT32, BO.BADC, [0xADDE, 0xEFBE], 0xDEADBEEF),
    (T.UINT32, BO.DCBA, [0xEFBE, 0xADDE], 0xDEADBEEF),
    # 16-bit: only the byte swap matters
    (T.INT16, BO.ABCD, [0xFFFE], -2),
    (T.INT16, BO.CDAB, [0xFFFE], -2),
    (T.INT16, BO.BADC, [0xFEFF], -2),
    (T.INT16, BO.DCBA, [0xFEFF], -2),
    (T.UINT16, BO.ABCD, [0x1234], 0x1234),
    (T.UINT16, BO.BADC, [0x3412], 0x1234),
    (T.UINT16, BO.DCBA, [0x3412], 0x1234),
    (T.INT16, BO.ABCD, [0x8000], -32768),
    (T.UINT16, BO.ABCD, [0xFFFF], 65535),
]


@pytest.mark.parametrize(("type_", "order", "words", "expected"), VECTORS)
def test_decode_vector(type_: DataType, order: ByteOrder, words: list[int],
                       expected: float) -> None:
    """Each type and byte order decodes its hand-computed registers to the expected value."""
    value = decode_one(point(0, type_, order), words)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("type_", "order", "words", "value"), VECTORS)
def test_encode_vector(type_: DataType, order: ByteOrder, words: list[int], value: float) -> None:
    """encode_value produces exactly the registers a device in that byte order holds."""
    assert encode_value(point(0, type_, order), value) == words


def in_order(abcd: list[int], order: ByteOrder) -> list[int]:
    """Rearrange big-endian words [AB, CD] the way a device in ``order`` stores them."""
    def swap(w: int) -> int:
        return ((w & 0xFF) << 8) | (w >> 8)
    w0, w1 = abcd
    return {BO.ABCD: [w0, w1], BO.CDAB: [w1, w0], BO.BADC: [swap(w0), swap(w1)],
            BO.DCBA: [swap(w1), swap(w0)]}[order]


@pytest.mark.parametrize("abcd", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000],
                                  [0xFFFF, 0xFFFF], [0x7F80, 0x0001]])
@pytest.mark.parametrize("order", list(ByteOrder))
def test_non_finite_float_is_none(abcd: list[int], order: ByteOrder) -> None:
    """NaN and +-inf float32 decode to None in every byte order."""
    assert decode_one(point(0, T.FLOAT32, order), in_order(abcd, order)) is None


def test_non_finite_float_leaves_neighbours() -> None:
    """A NaN float makes only its own value None; the rest of the block decodes normally."""
    points = [point(0, T.FLOAT32, name="a"), point(2, T.FLOAT32, name="nan"),
              point(4, T.UINT16, name="u")]
    assert compile_block(points, 0)([0x4366, 0x8000, 0x7FC0, 0, 7]) == [230.5, None, 7]


def test_scale_and_offset() -> None:
    """Scale and offset apply only to points that have them, and give floats."""
    points = [point(0, T.UINT16, name="raw"),
              point(1, T.INT16, name="scaled", scale=0.5, offset=10.0),
              point(2, T.UINT16, name="tenths", scale=0.1)]
    values = compile_block(points, 0)([2305, 0xFFD8, 2305])
    assert values[0] == 2305 and type(values[0]) is int
    assert values[1] == -10.0 and type(values[1]) is float
    assert values[2] == pytest.approx(230.5)


def test_scaled_nan_stays_none() -> None:
    """A non-finite float with a scale is None, not a scaled NaN."""
    p = point(0, T.FLOAT32, scale=2.0, offset=1.0)
    assert decode_one(p, [0x7FC0, 0]) is None


def test_mixed_block_with_gaps_and_overlap() -> None:
    """A block with gaps and overlapping points of mixed types and orders decodes each point."""
    points = [
        point(10, T.UINT16, name="a"),
        point(12, T.FLOAT32, BO.CDAB, name="f_cdab"),
        point(12, T.UINT32, name="u_overlap"),
        point(15, T.INT16, BO.BADC, name="i_badc"),
        point(13, T.UINT16, name="low_half"),
    ]
    words = [7, 0x9999, 0x8000, 0x4366, 0x9999, 0xFEFF]
    assert compile_block(points, 10)(words) == [7, 230.5, 0x80004366, -2, 0x4366]


def test_contiguous_uint16_block_is_the_registers() -> None:
    """A contiguous block of plain uint16 points returns a copy of the registers."""
    points = [point(i, T.UINT16) for i in range(5)]
    regs = [1, 2, 3, 4, 5]
    values = compile_block(points, 0)(regs)
    assert values == regs and values is not regs


def test_uint16_block_with_gaps_gathers() -> None:
    """Plain uint16 points with gaps pick their own registers in point order."""
    points = [point(4, T.UINT16, name="x"), point(0, T.UINT16, name="y")]
    assert compile_block(points, 0)([10, 11, 12, 13, 14]) == [14, 10]


def test_single_point_block() -> None:
    """A block of one two-register point decodes (itemgetter of one index is special)."""
    assert compile_block([point(3, T.FLOAT32, BO.DCBA)], 3)([0x0080, 0x6643]) == [230.5]


@pytest.mark.parametrize("words", [[1, 2, 3], [1]])
def test_wrong_length_raises(words: list[int]) -> None:
    """A register block of the wrong length is an error, not silently misread."""
    decode = compile_block([point(0, T.FLOAT32), point(2, T.INT32, BO.BADC)], 0)
    with pytest.raises((struct.error, IndexError)):
        decode(words)


def test_bits_with_gaps_from_padded_list() -> None:
    """Bit points pick their bits out of the padded pymodbus bit list, in point order."""
    points = [point(5, T.BOOL, name="b5", table=Table.COIL),
              point(2, T.BOOL, name="b2", table=Table.COIL)]
    bits = [False, False, False, True, False, False, False, False]  # from address 2
    assert compile_block(points, 2)(bits) == [True, False]


def test_contiguous_bits() -> None:
    """Contiguous bit points take the first bits and drop the padding."""
    points = [point(i, T.BOOL, table=Table.DISCRETE) for i in range(3)]
    assert compile_block(points, 0)([True, False, True, True, False, False, False, False]) == [
        True, False, True]


def test_short_bit_list_raises() -> None:
    """A bit list shorter than the block is an error."""
    decode = compile_block([point(9, T.BOOL, table=Table.COIL)], 0)
    with pytest.raises(IndexError):
        decode([True] * 8)


def test_point_before_start_rejected() -> None:
    """compile_block refuses a point that starts before the block."""
    with pytest.raises(ValueError, match="before the block start"):
        compile_block([point(1, T.UINT16)], 2)


ROUND_TRIP = [
    (T.FLOAT32, 1.0, 0.0, -1234.5),
    (T.FLOAT32, 0.5, 3.0, 100.25),
    (T.INT16, 0.1, 0.0, -12.3),
    (T.UINT16, 1.0, -40.0, 20.0),
    (T.INT32, 0.001, 0.0, -123456.789),
    (T.UINT32, 1.0, 0.0, 4_000_000_000),
]


@pytest.mark.parametrize(("type_", "scale", "offset", "value"), ROUND_TRIP)
@pytest.mark.parametrize("order", list(ByteOrder))
def test_round_trip(type_: DataType, scale: float, offset: float, value: float,
                    order: ByteOrder) -> None:
    """decode(encode(value)) gives the value back, including scale and offset."""
    p = point(0, type_, order, scale=scale, offset=offset)
    assert decode_one(p, encode_value(p, value)) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(("type_", "value"), [(T.INT16, 40000), (T.UINT16, -1),
                                               (T.UINT32, 2**32), (T.INT32, float("nan"))])
def test_encode_out_of_range(type_: DataType, value: float) -> None:
    """encode_value refuses a value its type cannot hold."""
    with pytest.raises(ValueError):
        encode_value(point(0, type_), value)


def test_encode_bool() -> None:
    """A bool point encodes as one 0/1 bit."""
    p = point(0, T.BOOL, table=Table.COIL)
    assert encode_value(p, True) == [1]
    assert encode_value(p, False) == [0]


# -- 64-bit values, strings, bits in registers, enums and bitfields ----------------------

def point_kw(address: int, type_: DataType, order: ByteOrder = ByteOrder.ABCD,
             **kwargs: Any) -> ModbusPoint:
    values: dict[str, Any] = {"name": f"p{address}", "interval_s": 1.0,
                              "table": Table.HOLDING, "address": address, "type": type_,
                              "order": order}
    values.update(kwargs)
    return ModbusPoint(**values)


# (type, order, registers as read, expected); bytes A..H most significant first.
VECTORS_64 = [
    # int64 -2 = FFFF FFFF FFFF FFFE
    (T.INT64, BO.ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    (T.INT64, BO.CDAB, [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    (T.INT64, BO.BADC, [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], -2),
    (T.INT64, BO.DCBA, [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    # uint64 0x0123456789ABCDEF: AB=0123 CD=4567 EF=89AB GH=CDEF
    (T.UINT64, BO.ABCD, [0x0123, 0x4567, 0x89AB, 0xCDEF], 0x0123456789ABCDEF),
    (T.UINT64, BO.CDAB, [0xCDEF, 0x89AB, 0x4567, 0x0123], 0x0123456789ABCDEF),
    (T.UINT64, BO.BADC, [0x2301, 0x6745, 0xAB89, 0xEFCD], 0x0123456789ABCDEF),
    (T.UINT64, BO.DCBA, [0xEFCD, 0xAB89, 0x6745, 0x2301], 0x0123456789ABCDEF),
    (T.UINT64, BO.ABCD, [0xFFFF] * 4, 2**64 - 1),
    # float64 -1234.5 = C0 93 4A 00 00 00 00 00
    (T.FLOAT64, BO.ABCD, [0xC093, 0x4A00, 0x0000, 0x0000], -1234.5),
    (T.FLOAT64, BO.CDAB, [0x0000, 0x0000, 0x4A00, 0xC093], -1234.5),
    (T.FLOAT64, BO.BADC, [0x93C0, 0x004A, 0x0000, 0x0000], -1234.5),
    (T.FLOAT64, BO.DCBA, [0x0000, 0x0000, 0x004A, 0x93C0], -1234.5),
]


@pytest.mark.parametrize(("type_", "order", "words", "expected"), VECTORS_64)
def test_decode_64_bit_vector(type_: DataType, order: ByteOrder, words: list[int],
                              expected: float) -> None:
    """64-bit types decode their hand-computed registers in each word/byte order."""
    value = decode_one(point(0, type_, order), words)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("type_", "order", "words", "value"), VECTORS_64)
def test_encode_64_bit_vector(type_: DataType, order: ByteOrder, words: list[int],
                              value: float) -> None:
    """encode_value gives the registers a device in that 64-bit order holds."""
    assert encode_value(point(0, type_, order), value) == words


@pytest.mark.parametrize("words", [[0x7FF8, 0, 0, 0], [0x7FF0, 0, 0, 0], [0xFFF0, 0, 0, 0]])
def test_non_finite_float64_is_none(words: list[int]) -> None:
    """NaN and +-inf float64 decode to None."""
    assert decode_one(point(0, T.FLOAT64), words) is None


def test_float64_sum_overflow_keeps_finite_values() -> None:
    """Two huge finite float64 values whose sum overflows both stay (no false None)."""
    big = [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]  # largest finite double
    values = compile_block([point(0, T.FLOAT64, name="a"), point(4, T.FLOAT64, name="b")],
                           0)(big + big)
    assert values == [1.7976931348623157e308] * 2


def test_scaled_overflow_is_none() -> None:
    """A finite value that overflows to infinity once scaled gives None."""
    p = point(0, T.FLOAT64, scale=10.0)
    assert decode_one(p, [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]) is None


@pytest.mark.parametrize(("order", "words", "expected"), [
    (BO.ABCD, [0x4142, 0x4344, 0x4500], "ABCDE"),          # 'AB' 'CD' 'E\0'
    (BO.BADC, [0x4241, 0x4443, 0x0045], "ABCDE"),          # bytes swapped per register
    (BO.ABCD, [0x4142, 0x2020, 0x2020], "AB"),             # trailing spaces stripped
    (BO.ABCD, [0x4142, 0x0043, 0x4400], "AB"),             # ends at the first NUL
    (BO.ABCD, [0x0000, 0x0000, 0x0000], ""),
    (BO.ABCD, [0xC3A9, 0x7465, 0x0000], "\u00e9te"),       # UTF-8 'ete' with e-acute
    (BO.ABCD, [0x41FF, 0xFE42, 0x0000], "A\ufffd\ufffdB"),  # not UTF-8: replaced, no error
])
def test_string_vector(order: ByteOrder, words: list[int], expected: str) -> None:
    """String registers decode in both byte orders, trimmed, never raising on bad bytes."""
    assert decode_one(point_kw(0, T.STRING, order, count=3), words) == expected


def test_string_encode_pads_and_refuses_overflow() -> None:
    """A string is written NUL-padded in its byte order; one too long is refused."""
    assert encode_value(point_kw(0, T.STRING, count=3), "ABCDE") == [0x4142, 0x4344, 0x4500]
    assert encode_value(point_kw(0, T.STRING, BO.BADC, count=2), "AB") == [0x4241, 0]
    with pytest.raises(ValueError, match="over the 4"):
        encode_value(point_kw(0, T.STRING, count=2), "ABCDE")


@pytest.mark.parametrize(("bit", "expected"), [(0, True), (1, False), (15, True), (14, False)])
def test_bit_inside_register(bit: int, expected: bool) -> None:
    """A bool point on a register is its bit, 0 being the least significant."""
    assert decode_one(point_kw(0, T.BOOL, bit=bit), [0x8001]) is expected


def test_bits_and_words_of_one_register_share_a_block() -> None:
    """Several bits and the whole word of one register decode from one read."""
    points = [point_kw(0, T.BOOL, bit=3, name="b3"), point_kw(0, T.UINT16, name="w"),
              point_kw(0, T.BOOL, bit=0, name="b0")]
    assert compile_block(points, 0)([0x0008]) == [True, 8, False]


def test_enum_maps_values_to_names() -> None:
    """An enum point gives the name of its value, or the number as text when unmapped."""
    p = point_kw(0, T.UINT16, enum=((0, "stopped"), (1, "running"), (3, "fault")))
    decode = compile_block([p], 0)
    assert decode([1]) == ["running"]
    assert decode([7]) == ["7"]
    assert encode_value(p, "fault") == [3]
    assert encode_value(p, 1) == [1]
    with pytest.raises(ValueError, match="not one of"):
        encode_value(p, "exploded")


@pytest.mark.parametrize(("words", "expected"), [
    ([0x0000], ""),
    ([0x0001], "door_open"),
    ([0x0005], "door_open,overheat"),
    ([0x8004], "overheat,bit15"),
])
def test_bitfield_names_set_bits(words: list[int], expected: str) -> None:
    """A bitfield gives the names of its set bits, ascending, comma-joined."""
    p = point_kw(0, T.UINT16, bits=((0, "door_open"), (2, "overheat")))
    assert decode_one(p, words) == expected


def test_bitfield_of_signed_and_wide_types() -> None:
    """Bitfields on int16 use the bit pattern; on uint32 they see all 32 bits."""
    assert decode_one(point_kw(0, T.INT16, bits=((15, "sign"),)), [0x8000]) == "sign"
    wide = point_kw(0, T.UINT32, bits=((0, "a"), (31, "z")))
    assert decode_one(wide, [0x8000, 0x0001]) == "a,z"
    assert encode_value(wide, "a,z") == [0x8000, 0x0001]
    assert encode_value(point_kw(0, T.INT16, bits=((15, "sign"),)), ["sign"]) == [0x8000]


def test_mixed_block_of_every_kind() -> None:
    """A block mixing floats, strings, bits, enums and byte orders decodes each point."""
    points = [
        point_kw(0, T.FLOAT32, BO.CDAB, name="f"),
        point_kw(2, T.STRING, BO.BADC, count=2, name="s"),
        point_kw(4, T.BOOL, bit=1, name="b"),
        point_kw(5, T.UINT16, enum=((2, "two"),), name="e"),
        point_kw(6, T.INT64, BO.DCBA, name="q"),
        point_kw(10, T.FLOAT32, name="nan"),
    ]
    words = [0x8000, 0x4366, 0x4241, 0x0043, 0x0002, 2,
             0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF, 0x7FC0, 0]
    assert compile_block(points, 0)(words) == [230.5, "ABC", True, "two", -2, None]


@pytest.mark.parametrize(("type_", "value"), [(T.INT64, 2**63), (T.UINT64, -1),
                                               (T.FLOAT32, "x"), (T.UINT16, None)])
def test_encode_refuses_what_does_not_fit(type_: DataType, value: object) -> None:
    """encode_value refuses out-of-range and non-numeric values with ValueError."""
    with pytest.raises(ValueError):
        encode_value(point(0, type_), value)


def test_encode_bit_in_register_is_refused() -> None:
    """A bit inside a register has no registers of its own to encode."""
    with pytest.raises(ValueError, match="set_bit"):
        encode_value(point_kw(0, T.BOOL, bit=2), True)
