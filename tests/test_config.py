"""Configuration validation: every mistake reported at once, with its path and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import ConfigInvalid, Security, parse_config
from edge_agent.config.model import DrainOrder, ThinRule
from edge_agent.drivers.modbus.config import ByteOrder, DataType, ModbusPoint, Table

BASE = """\
gateway: {id: gw-1, site: town-hall}
uplink:
  host: 127.0.0.1
  topic_prefix: city
  security: plaintext
buffer:
  path: buffer.db
devices:
  - name: meter
    driver: modbus_tcp
    connection: {host: 127.0.0.1, port: 5020}
    points:
      - {name: voltage, table: holding, address: 0, type: float32, order: CDAB, scale: 0.1}
      - {name: relay, table: coil, address: 3, type: bool, interval_s: 5}
"""


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(textwrap.dedent(text), source="site.yaml", base_dir=tmp_path)
    return [str(p) for p in info.value.problems]


def test_valid_config_parses_to_typed_values(tmp_path: Path) -> None:
    """A valid file gives typed devices and points, with paths resolved next to it."""
    config = parse_config(BASE, base_dir=tmp_path)
    assert config.gateway.id == "gw-1"
    assert config.uplink.security is Security.PLAINTEXT
    assert config.uplink.port == 1883
    assert config.buffer.path == (tmp_path / "buffer.db").resolve()
    device = config.devices[0]
    assert device.points[0] == ModbusPoint(name="voltage", table=Table.HOLDING, address=0,
                                           type=DataType.FLOAT32, order=ByteOrder.CDAB,
                                           scale=0.1, offset=0.0, interval_s=1.0)
    assert device.points[1].interval_s == 5.0


def test_every_problem_is_reported_with_path_and_line(tmp_path: Path) -> None:
    """Several mistakes in one file are all listed, each with its key path and line."""
    text = BASE.replace("port: 5020", "port: 70000").replace(
        "type: bool, interval_s: 5", "type: bool, intervall_s: 5").replace(
        "address: 0, type: float32", "address: 0, type: float33")
    found = problems(text, tmp_path)
    assert "devices[0] (meter).connection.port (line 11): 70000 is over the maximum of 65535" \
        in found
    assert any(p.startswith("devices[0] (meter).points[0].type (line 13): 'float33' is not one")
               for p in found)
    assert any(p.startswith("devices[0] (meter).points[1].intervall_s (line 14): unknown key "
                            "(did you mean 'interval_s'?)") for p in found)
    assert len(found) == 3


def test_missing_sections_and_unknown_top_level_key(tmp_path: Path) -> None:
    """Missing required sections and unknown keys are errors, not defaults."""
    found = problems("gateway: {id: gw-1, site: s}\nbufer: {path: x.db}\n", tmp_path)
    assert "bufer (line 2): unknown key (did you mean 'buffer'?); allowed here: buffer, clock, " \
           "devices, gateway, log_level, uplink" in found
    assert "missing required key 'uplink'" in " ".join(found)
    assert "missing required key 'devices'" in " ".join(found)


def test_tls_is_required_unless_plaintext_is_explicit(tmp_path: Path) -> None:
    """Without tls files the uplink is rejected unless security: plaintext is set."""
    found = problems(BASE.replace("  security: plaintext\n", ""), tmp_path)
    assert any("missing required key 'tls'" in p and p.startswith("uplink (line 3)")
               for p in found)


def test_tls_files_must_exist(tmp_path: Path) -> None:
    """A TLS file path that does not exist is reported before any connection attempt."""
    (tmp_path / "ca.pem").write_text("x")
    text = BASE.replace("  security: plaintext\n", "  tls: {ca_file: ca.pem, cert_file: "
                        "gw.pem, key_file: gw.key}\n")
    found = problems(text, tmp_path)
    assert any(p.startswith("uplink.tls.cert_file (line 5): file") for p in found)
    assert any(p.startswith("uplink.tls.key_file (line 5): file") for p in found)
    assert not any("ca_file" in p for p in found)


def test_modbus_point_rules(tmp_path: Path) -> None:
    """Type/table mismatches, address overflow and duplicate names name the point."""
    text = BASE.replace(
        "      - {name: relay, table: coil, address: 3, type: bool, interval_s: 5}\n",
        "      - {name: relay, table: coil, address: 3, type: int16}\n"
        "      - {name: last, table: input, address: 65535, type: uint32}\n"
        "      - {name: voltage, table: input, address: 10, type: uint16}\n")
    found = problems(text, tmp_path)
    assert any(p.startswith("devices[0] (meter).points[1].type (line 14): coil points hold "
                            "single bits") for p in found)
    assert any(p.startswith("devices[0] (meter).points[2].address (line 15): address 65535 + 2 "
                            "registers runs past") for p in found)
    assert any(p.startswith("devices[0] (meter).points[3] (line 16): point name 'voltage' is "
                            "already used") for p in found)


def test_duplicate_keys_and_device_names(tmp_path: Path) -> None:
    """YAML duplicate keys and two devices with one name are errors."""
    text = BASE + """\
  - name: meter
    driver: modbus_tcp
    driver: modbus_tcp
    connection: {host: 127.0.0.1}
    points: [{name: a, table: holding, address: 0, type: uint16}]
"""
    found = problems(text, tmp_path)
    assert "devices[1] (meter).driver (line 17): duplicate key" in found
    assert any(p.startswith("devices[1] (meter) (line 15): device name 'meter' is already used")
               for p in found)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    """Broken YAML is reported with its line, not as a traceback."""
    found = problems("gateway: {id: gw-1\nuplink: [\n", tmp_path)
    assert found == ["line 2: not valid YAML: did not find expected ',' or '}' while parsing a "
                     "flow mapping"]


def test_unknown_driver(tmp_path: Path) -> None:
    """An unknown driver kind lists the known ones."""
    found = problems(BASE.replace("driver: modbus_tcp", "driver: modbus_tpc"), tmp_path)
    assert "devices[0] (meter).driver (line 10): unknown driver 'modbus_tpc'; known: " \
           "modbus_rtu, modbus_rtu_over_tcp, modbus_tcp" in found


def test_repeat_expands_consecutive_points(tmp_path: Path) -> None:
    """repeat: N makes N points named name_0.. at consecutive addresses of the type width."""
    text = BASE.replace("type: float32, order: CDAB, scale: 0.1}",
                        "type: uint32, repeat: 3}")
    config = parse_config(text, base_dir=tmp_path)
    points = config.devices[0].points
    assert [(p.name, p.address) for p in points[:3]] == [("voltage_0", 0), ("voltage_1", 2),
                                                         ("voltage_2", 4)]


def test_validate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    """`edge-agent validate` exits 0 on a good file and 1 with the problems on a bad one."""
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    assert main(["validate", str(good)]) == 0
    assert "OK (1 devices, 2 points)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("address: 3", "address: -3"))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "points[1].address (line 14): -3 is below the minimum of 0" in err
    assert "Traceback" not in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("thin", "message"), [
    ("{keep_every: 4, min_max_window_s: 60}", "set exactly one of keep_every"),
    ("{}", "set exactly one of keep_every"),
    ("{keep_every: 1}", "1 is below the minimum of 2"),
    ("{min_max_window_s: 0.5}", "0.5 is below the minimum of 1"),
])
def test_thinning_mistakes_point_at_buffer_thin(tmp_path: Path, thin: str, message: str) -> None:
    found = problems(BASE.replace("  path: buffer.db\n", f"  path: buffer.db\n  thin: {thin}\n"),
                     tmp_path)
    assert len(found) == 1 and found[0].startswith("buffer.thin") and message in found[0]


def test_thinning_with_policy_block_is_refused(tmp_path: Path) -> None:
    found = problems(BASE.replace(
        "  path: buffer.db\n", "  path: buffer.db\n  policy: block\n  thin: {keep_every: 4}\n"),
        tmp_path)
    assert len(found) == 1 and "thin has no effect with policy block" in found[0]


def test_thinning_and_drain_settings_parse(tmp_path: Path) -> None:
    text = BASE.replace("  path: buffer.db\n",
                        "  path: buffer.db\n  thin: {min_max_window_s: 60}\n").replace(
        "  security: plaintext\n", "  security: plaintext\n  drain: live_first\n"
        "  max_message_bytes: 64 KiB\n  historical_after_s: 30\n")
    config = parse_config(text, base_dir=tmp_path)
    assert config.buffer.thin == ThinRule(min_max_window_s=60.0)
    assert (config.uplink.drain, config.uplink.max_message_bytes,
            config.uplink.historical_after_s) == (DrainOrder.LIVE_FIRST, 65536, 30.0)
