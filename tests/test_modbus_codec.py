"""Table tests of the Modbus block codec against hand-computed register vectors."""

from __future__ import annotations

import struct

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
