"""Validation of Modbus devices: serial settings, new point keys, rules across devices."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge_agent.config import ConfigInvalid, parse_config
from edge_agent.drivers.modbus.config import (
    ByteOrder,
    DataType,
    ModbusRtuConnection,
    ModbusRtuOverTcpConnection,
    Parity,
    WriteFunction,
)

HEAD = """\
gateway: {id: gw-1, site: town-hall}
uplink: {host: 127.0.0.1, topic_prefix: city, security: plaintext}
buffer: {path: buffer.db}
devices:
"""

AIR = """\
  - name: air
    driver: modbus_rtu
    connection: {port: /dev/ttyUSB0, unit_id: 3, baudrate: 19200, parity: even, stopbits: 1}
    points:
      - {name: pm2_5, table: input, address: 0, type: float32, order: CDAB}
"""


def parse(devices: str, tmp_path: Path) -> object:
    return parse_config(HEAD + textwrap.dedent(devices), base_dir=tmp_path)


def problems(devices: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse(devices, tmp_path)
    return [str(p) for p in info.value.problems]


def test_rtu_device_parses(tmp_path: Path) -> None:
    """A modbus_rtu device gives its serial settings, with defaults for the rest."""
    config = parse(AIR, tmp_path)
    conn = config.devices[0].connection  # type: ignore[attr-defined]
    assert conn == ModbusRtuConnection(port="/dev/ttyUSB0", unit_id=3, baudrate=19200,
                                       parity=Parity.EVEN, stopbits=1, bytesize=8)


def test_rtu_over_tcp_device_parses(tmp_path: Path) -> None:
    """A modbus_rtu_over_tcp device takes host, port, unit id and an optional baud rate."""
    config = parse("""\
      - name: gw
        driver: modbus_rtu_over_tcp
        connection: {host: 10.0.0.5, port: 4001, unit_id: 9, baudrate: 9600,
                     write_function: multiple}
        points: [{name: a, table: holding, address: 0, type: uint16}]
    """, tmp_path)
    assert config.devices[0].connection == ModbusRtuOverTcpConnection(  # type: ignore[attr-defined]
        host="10.0.0.5", port=4001, unit_id=9, baudrate=9600,
        write_function=WriteFunction.MULTIPLE)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("unit_id: 3", "unit_id: 0", "connection.unit_id (line 7): 0 is below the minimum of 1"),
    ("baudrate: 19200", "baudrate: 19000",
     "connection.baudrate (line 7): 19000 is not a standard baud rate"),
    ("parity: even", "parity: mark", "connection.parity (line 7): 'mark' is not one of"),
    ("stopbits: 1", "stopbits: 3", "connection.stopbits (line 7): 3 is not one of 1, 2"),
    ("stopbits: 1", "stop_bits: 1", "connection.stop_bits (line 7): unknown key"),
    ("port: /dev/ttyUSB0, ", "", "connection (line 7): missing required key 'port'"),
])
def test_bad_serial_settings_name_path_and_line(old: str, new: str, expected: str,
                                                tmp_path: Path) -> None:
    """Each wrong serial setting is reported once, at its key path and line."""
    found = problems(AIR.replace(old, new), tmp_path)
    assert len(found) == 1
    assert found[0].startswith(f"devices[0] (air).{expected}")


def test_point_key_rules(tmp_path: Path) -> None:
    """Misplaced point keys are each reported with their path and line, no traceback."""
    found = problems(AIR + """\
      - {name: s, table: holding, address: 10, type: string}
      - {name: s2, table: holding, address: 20, type: string, count: 4, order: CDAB}
      - {name: flag, table: holding, address: 30, type: bool}
      - {name: c, table: coil, address: 0, type: bool, bit: 3}
      - {name: e, table: holding, address: 31, type: uint16, enum: {0: off}, scale: 2}
      - {name: f, table: holding, address: 32, type: float32, bits: {0: x}}
      - {name: g, table: holding, address: 34, type: uint16, bits: {16: x}}
      - {name: h, table: holding, address: 35, type: uint16, count: 2}
      - {name: i, table: holding, address: 36, type: uint16, enum: {a: x}}
""", tmp_path)
    prefix = "devices[0] (air).points"
    assert found == [
        f"{prefix}[1].type (line 10): a string point needs 'count' (registers, two "
        "characters each)",
        f"{prefix}[2].order (line 11): strings are ABCD (first character in the high byte) "
        "or BADC (in the low byte)",
        f"{prefix}[3].type (line 12): a bool point on holding registers needs 'bit' "
        "(0..15, 0 = least significant)",
        f"{prefix}[4].bit (line 13): coil points are single bits already: remove 'bit'",
        f"{prefix}[5].scale (line 14): 'scale' does not apply to enum/bits points",
        f"{prefix}[6].bits (line 15): 'bits' needs an integer type, not float32",
        f"{prefix}[7].bits (line 16): bit 16 is outside a uint16 (bits 0..15)",
        f"{prefix}[8].count (line 17): 'count' applies only to type string; use 'repeat' "
        "for several values",
        f"{prefix}[9].enum.a (line 18): expected a whole number, got 'a'",
    ]


def test_new_point_keys_parse(tmp_path: Path) -> None:
    """bit, count, enum, bits and merge become typed point fields (enum names as written)."""
    config = parse(AIR + """\
      - {name: s, table: holding, address: 10, type: string, count: 4, order: BADC}
      - {name: flag, table: holding, address: 30, type: bool, bit: 3}
      - {name: mode, table: holding, address: 31, type: uint16, enum: {0: off, 1: on}}
      - {name: alarms, table: holding, address: 32, type: uint32, bits: {0: door, 31: fire}}
      - {name: odd, table: holding, address: 40, type: int64, repeat: 2, merge: false}
""", tmp_path)
    by_name = {p.name: p for p in config.devices[0].points}  # type: ignore[attr-defined]
    assert (by_name["s"].count, by_name["s"].width, by_name["s"].order) == (4, 4, ByteOrder.BADC)
    assert (by_name["flag"].bit, by_name["flag"].in_register) == (3, True)
    assert by_name["mode"].enum == ((0, "off"), (1, "on"))
    assert by_name["alarms"].bits == ((0, "door"), (31, "fire"))
    assert [(p.address, p.merge_group, p.type) for p in (by_name["odd_0"], by_name["odd_1"])] \
        == [(40, "odd", DataType.INT64), (44, "odd", DataType.INT64)]
    assert by_name["s"].merge_group is None


def test_devices_on_one_port_must_agree_on_line_settings(tmp_path: Path) -> None:
    """A second device on a serial port with other line settings is an error at it."""
    found = problems(AIR + """\
  - name: meter
    driver: modbus_rtu
    connection: {port: /dev/ttyUSB0, unit_id: 4, baudrate: 9600}
    points: [{name: v, table: input, address: 0, type: float32}]
""", tmp_path)
    assert found == [
        "devices[1] (meter) (line 10): devices on serial port /dev/ttyUSB0 must share its line "
        "settings (baudrate/parity/stopbits/bytesize): device 'air' uses 19200/even/1/8, this "
        "one 9600/none/1/8"]


def test_unit_ids_are_unique_per_bus(tmp_path: Path) -> None:
    """Two devices with one unit id on one port are an error; on another port they are not."""
    second = AIR.replace("name: air", "name: air-2")
    other_port = AIR.replace("name: air", "name: air-3").replace("ttyUSB0", "ttyUSB1")
    found = problems(AIR + second + other_port, tmp_path)
    assert found == ["devices[1] (air-2) (line 10): unit_id 3 on /dev/ttyUSB0 is already used "
                     "by device 'air'"]


@pytest.mark.parametrize("example", sorted(
    (Path(__file__).parent.parent / "deploy" / "examples").glob("*.yaml")),
    ids=lambda p: p.name)
def test_example_maps_validate(example: Path, tmp_path: Path) -> None:
    """Every example map under deploy/examples validates (certificates stubbed)."""
    (tmp_path / "certs").mkdir()
    for name in ("platform-ca.pem", "gw.pem", "gw.key"):
        (tmp_path / "certs" / name).write_text("stub")
    config = parse_config(example.read_text(), source=example.name, base_dir=tmp_path)
    assert config.devices


INVERTER = """\
  - name: pv
    driver: modbus_tcp
    connection: {host: 192.0.2.40}
    interval_s: 5
    points:
      - {name: w, table: holding, address: 0, type: int16, unit: W, scale_factor: w_sf}
      - {name: w_sf, table: holding, address: 1, type: int16}
"""


def test_scale_factor_points_are_embedded_not_published(tmp_path: Path) -> None:
    """A point named as scale_factor leaves the device's points and rides, unpublished,
    inside each point that uses it, whatever their intervals."""
    config = parse(INVERTER + """\
      - {name: wh, table: holding, address: 2, type: uint32, interval_s: 60,
         scale_factor: w_sf}
""", tmp_path)
    points = config.devices[0].points  # type: ignore[attr-defined]
    assert [(p.name, p.interval_s) for p in points] == [("w", 5.0), ("wh", 60.0)]
    factor = points[0].scale_factor
    assert (factor.name, factor.address, factor.type, factor.published) \
        == ("w_sf", 1, DataType.INT16, False)
    assert points[1].scale_factor is factor


def test_scale_factor_errors_name_path_and_line(tmp_path: Path) -> None:
    """Every wrong scale_factor is reported at its key path and line: unknown, itself,
    circular, chained, not a plain int16, on a type it cannot scale, and keys that do not
    apply to a scale factor point."""
    found = problems(INVERTER + """\
      - {name: a, table: holding, address: 10, type: uint16, scale_factor: w_fs}
      - {name: b, table: holding, address: 11, type: uint16, scale_factor: b}
      - {name: c, table: holding, address: 12, type: int16, scale_factor: d}
      - {name: d, table: holding, address: 13, type: int16, scale_factor: c}
      - {name: e, table: holding, address: 14, type: int16, scale_factor: w}
      - {name: f, table: holding, address: 15, type: int16, scale_factor: u_sf}
      - {name: u_sf, table: holding, address: 16, type: uint16}
      - {name: g, table: holding, address: 17, type: int16, scale_factor: x_sf}
      - {name: x_sf, table: holding, address: 18, type: int16, scale: 10}
      - {name: h, table: holding, address: 20, type: float32, scale_factor: w_sf}
      - {name: i, table: holding, address: 22, type: uint16, enum: {0: off},
         scale_factor: w_sf}
      - {name: j, table: holding, address: 23, type: uint16, scale_factor: j_sf}
      - {name: j_sf, table: holding, address: 24, type: int16, interval_s: 60, unit: W}
""", tmp_path)
    prefix = "devices[0] (pv).points"
    assert found == [
        f"{prefix}[11].scale_factor (line 21): 'scale_factor' needs an integer type "
        "(SunSpec int16, uint16, int32, uint32, acc), not float32",
        f"{prefix}[12].scale_factor (line 23): 'scale_factor' does not apply to enum/bits "
        "points",
        f"{prefix}[2].scale_factor (line 12): no point 'w_fs' on this device (did you mean "
        "'w_sf'?)",
        f"{prefix}[3].scale_factor (line 13): a point cannot be its own scale factor",
        f"{prefix}[4].scale_factor (line 14): circular reference: 'd' takes its scale factor "
        "from 'c'",
        f"{prefix}[5].scale_factor (line 15): circular reference: 'c' takes its scale factor "
        "from 'd'",
        f"{prefix}[6].scale_factor (line 16): 'w' (points[0], line 10) has a scale_factor of "
        "its own: scale factors do not chain",
        f"{prefix}[7].scale_factor (line 17): scale factor point 'u_sf' (points[8], line 18) "
        "is uint16: a scale factor must be a plain int16 (SunSpec sunssf)",
        f"{prefix}[9].scale_factor (line 19): scale factor point 'x_sf' (points[10], line 20) "
        "has scale: a scale factor must be a plain int16 (SunSpec sunssf)",
        f"{prefix}[14].interval_s (line 25): 'interval_s' does not apply to a scale factor "
        "point: it is read in the same poll as each point that uses it",
        f"{prefix}[14].unit (line 25): 'unit' does not apply to a scale factor point: it is "
        "not published",
    ]


def test_scale_factor_of_an_invalid_entry_is_not_called_unknown(tmp_path: Path) -> None:
    """A scale_factor naming an entry that has problems of its own reports those only."""
    found = problems(INVERTER.replace("address: 1, type: int16}", "address: -1, type: int16}"),
                     tmp_path)
    assert found == ["devices[0] (pv).points[1].address (line 11): -1 is below the minimum "
                     "of 0"]
