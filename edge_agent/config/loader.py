"""Load and fully validate a gateway configuration file before any I/O.

Every problem is collected (never just the first) and reported with the path to the key
and its line. Relative file paths are resolved against the configuration file's folder,
so a config and its certificates can be copied together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from edge_agent.clock import SyncCheck
from edge_agent.drivers.registry import DRIVERS, load

from .model import (
    AgentConfig,
    BufferConfig,
    ClockConfig,
    DeviceConfig,
    DrainOrder,
    Durability,
    GatewayConfig,
    MqttVersion,
    OverflowPolicy,
    Security,
    ThinRule,
    TlsConfig,
    UplinkConfig,
)
from .nodes import MISSING, ConfigInvalid, Cursor, Problems, load_yaml

__all__ = ["IDENTIFIER", "load_config", "parse_config"]

IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Names that appear in MQTT topics and telemetry: no '/', '+', '#' or spaces."""
_TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate ``path``; raise :class:`ConfigInvalid` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(str(path), []) from exc
    return parse_config(text, source=str(path), base_dir=path.parent)


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None
                 ) -> AgentConfig:
    """Validate configuration text; raise :class:`ConfigInvalid` listing every problem."""
    problems = Problems(source)
    base = (base_dir or Path.cwd()).resolve()
    root = load_yaml(text, source, problems)
    config = _parse_root(root, base) if root is not None else None
    if problems or config is None:
        raise ConfigInvalid(source, problems.items)
    return config


def _parse_root(root: Cursor, base: Path) -> AgentConfig | None:
    keys = root.mapping(required={"gateway", "uplink", "buffer", "devices"},
                        optional={"log_level", "clock"})
    if keys is None:
        return None
    gateway = _parse_gateway(keys["gateway"]) if "gateway" in keys else None
    uplink = (_parse_uplink(keys["uplink"], base, gateway)
              if "uplink" in keys else None)
    buffer = _parse_buffer(keys["buffer"], base) if "buffer" in keys else None
    devices = _parse_devices(keys["devices"]) if "devices" in keys else None
    log_level = "INFO"
    if "log_level" in keys:
        level = keys["log_level"].str()
        if level is not MISSING and level.upper() not in _LOG_LEVELS:
            keys["log_level"].error(f"{level!r} is not one of {sorted(_LOG_LEVELS)}")
        elif level is not MISSING:
            log_level = level.upper()
    clock = _parse_clock(keys["clock"]) if "clock" in keys else ClockConfig()
    if None in (gateway, uplink, buffer, devices, clock) or root.problems:
        return None
    assert gateway and uplink and buffer and clock and devices is not None
    return AgentConfig(gateway=gateway, uplink=uplink, buffer=buffer, devices=devices,
                       clock=clock, log_level=log_level, source=root.problems.source)


def _parse_clock(cur: Cursor) -> ClockConfig | None:
    keys = cur.mapping(required=set(), optional={"sync_check", "max_hold_s"})
    if keys is None:
        return None
    sync_check = _opt(keys, "sync_check", "enum", SyncCheck.NONE, enum_type=SyncCheck)
    max_hold_s = _opt(keys, "max_hold_s", "float", 600.0, minimum=0)
    if MISSING in (sync_check, max_hold_s):
        return None
    return ClockConfig(sync_check=sync_check, max_hold_s=max_hold_s)


def _parse_gateway(cur: Cursor) -> GatewayConfig | None:
    keys = cur.mapping(required={"id", "site"}, optional=set())
    if keys is None:
        return None
    gid = keys["id"].str(pattern=IDENTIFIER, what="gateway id (letters, digits, _ . -)") \
        if "id" in keys else MISSING
    site = keys["site"].str(pattern=IDENTIFIER, what="site name (letters, digits, _ . -)") \
        if "site" in keys else MISSING
    if MISSING in (gid, site):
        return None
    return GatewayConfig(id=gid, site=site)


def _opt(keys: dict[str, Cursor], key: str, getter: str, default: Any, **kwargs: Any) -> Any:
    if key not in keys:
        return default
    return getattr(keys[key], getter)(**kwargs)


def _parse_uplink(cur: Cursor, base: Path, gateway: GatewayConfig | None) -> UplinkConfig | None:
    keys = cur.mapping(
        required={"host", "topic_prefix"},
        optional={"port", "security", "tls", "client_id", "mqtt_version", "keepalive_s",
                  "max_inflight", "connect_timeout_s", "reconnect_initial_s",
                  "reconnect_max_s", "shutdown_grace_s", "username", "password",
                  "max_message_bytes", "coalesce", "drain", "historical_after_s",
                  "ledger_interval_s"})
    if keys is None:
        return None
    security = _opt(keys, "security", "enum", Security.TLS, enum_type=Security)
    tls: TlsConfig | None = None
    if "tls" in keys:
        tls = _parse_tls(keys["tls"], base)
    elif security is Security.TLS:
        cur.error("missing required key 'tls' (ca_file, cert_file, key_file); "
                  "set security: plaintext only for a broker on a trusted link")
    if security is Security.PLAINTEXT and "tls" in keys:
        keys["tls"].error("tls is set but security is plaintext: remove one of them")
    values = {
        "host": keys["host"].str() if "host" in keys else MISSING,
        "port": _opt(keys, "port", "int", 8883 if security is Security.TLS else 1883,
                     minimum=1, maximum=65535),
        "topic_prefix": keys["topic_prefix"].str(pattern=_TOPIC_PREFIX,
                                                 what="topic prefix (no + # or empty levels)")
        if "topic_prefix" in keys else MISSING,
        "client_id": _opt(keys, "client_id", "str", gateway.id if gateway else "edge-agent"),
        "mqtt_version": _opt(keys, "mqtt_version", "enum", MqttVersion.V5,
                             enum_type=MqttVersion),
        "keepalive_s": _opt(keys, "keepalive_s", "float", 30.0, minimum=5, maximum=3600),
        "max_inflight": _opt(keys, "max_inflight", "int", 8, minimum=2, maximum=1000),
        "connect_timeout_s": _opt(keys, "connect_timeout_s", "float", 10.0, minimum=0.1),
        "reconnect_initial_s": _opt(keys, "reconnect_initial_s", "float", 1.0, minimum=0.01),
        "reconnect_max_s": _opt(keys, "reconnect_max_s", "float", 60.0, minimum=0.01),
        "shutdown_grace_s": _opt(keys, "shutdown_grace_s", "float", 5.0, minimum=0),
        "username": _opt(keys, "username", "str", None),
        "password": _opt(keys, "password", "str", None),
        "max_message_bytes": _opt(keys, "max_message_bytes", "size", 128 * 1024,
                                  minimum=4096, maximum=256 * 1024**2),
        "coalesce": _opt(keys, "coalesce", "bool", True),
        "drain": _opt(keys, "drain", "enum", DrainOrder.OLDEST_FIRST, enum_type=DrainOrder),
        "historical_after_s": _opt(keys, "historical_after_s", "float", 10.0, minimum=0),
        "ledger_interval_s": _opt(keys, "ledger_interval_s", "float", 300.0, minimum=1),
    }
    if MISSING in values.values() or security is MISSING or (
            security is Security.TLS and tls is None):
        return None
    return UplinkConfig(security=security, tls=tls, **values)


def _parse_tls(cur: Cursor, base: Path) -> TlsConfig | None:
    keys = cur.mapping(required={"ca_file", "cert_file", "key_file"}, optional={"server_name"})
    if keys is None:
        return None
    files = {k: _file(keys[k], base) if k in keys else MISSING
             for k in ("ca_file", "cert_file", "key_file")}
    server_name = _opt(keys, "server_name", "str", None)
    if MISSING in files.values() or server_name is MISSING:
        return None
    return TlsConfig(server_name=server_name, **files)


def _file(cur: Cursor, base: Path) -> Any:
    """A path to a readable file; checked now so a typo is found before the first connect."""
    name = cur.str()
    if name is MISSING:
        return MISSING
    path = (base / name).resolve()
    if not path.is_file():
        cur.error(f"file {str(path)!r} does not exist or is not a file")
        return MISSING
    return path


def _parse_buffer(cur: Cursor, base: Path) -> BufferConfig | None:
    keys = cur.mapping(required={"path"},
                       optional={"max_bytes", "durability", "commit_interval_s",
                                 "queue_max_samples", "max_message_readings", "max_age_s",
                                 "min_free_bytes", "policy", "thin"})
    if keys is None:
        return None
    path = keys["path"].str() if "path" in keys else MISSING
    values = {
        "max_bytes": _opt(keys, "max_bytes", "size", 1024**3, minimum=1024**2),
        "durability": _opt(keys, "durability", "enum", Durability.FULL, enum_type=Durability),
        "commit_interval_s": _opt(keys, "commit_interval_s", "float", 0.25, minimum=0.001,
                                  maximum=60),
        "queue_max_samples": _opt(keys, "queue_max_samples", "int", 4096, minimum=1),
        "max_message_readings": _opt(keys, "max_message_readings", "int", 1000, minimum=1,
                                     maximum=100_000),
        "max_age_s": _opt(keys, "max_age_s", "float", None, minimum=60),
        "min_free_bytes": _opt(keys, "min_free_bytes", "size", 64 * 1024**2),
        "policy": _opt(keys, "policy", "enum", OverflowPolicy.DROP_OLDEST,
                       enum_type=OverflowPolicy),
        "thin": _parse_thin(keys["thin"]) if "thin" in keys else None,
    }
    if values["policy"] is OverflowPolicy.BLOCK and values["thin"] not in (None, MISSING):
        keys["thin"].error("thin has no effect with policy block (nothing is dropped): "
                           "remove it or choose drop_oldest or drop_newest")
    if path is MISSING or MISSING in values.values():
        return None
    return BufferConfig(path=(base / path).resolve(), **values)


def _parse_thin(cur: Cursor) -> Any:
    keys = cur.mapping(required=set(),
                       optional={"keep_every", "min_max_window_s", "older_than_s"})
    if keys is None:
        return MISSING
    older = _opt(keys, "older_than_s", "float", 3600.0, minimum=0)
    if len(keys.keys() & {"keep_every", "min_max_window_s"}) != 1:
        cur.error("set exactly one of keep_every (keep every Nth sample) or "
                  "min_max_window_s (keep each point's lowest and highest per window)")
        return MISSING
    if "keep_every" in keys:
        every = keys["keep_every"].int(minimum=2, maximum=1_000_000)
        return MISSING if MISSING in (every, older) else ThinRule(keep_every=every,
                                                                  older_than_s=older)
    window = keys["min_max_window_s"].float(minimum=1)
    return MISSING if MISSING in (window, older) else ThinRule(min_max_window_s=window,
                                                               older_than_s=older)


def _parse_devices(cur: Cursor) -> tuple[DeviceConfig, ...] | None:
    devices: list[DeviceConfig] = []
    names: dict[str, int] = {}
    ok = True
    for index, item in cur.items():
        item = _labelled(item)
        device = _parse_device(item)
        if device is None:
            ok = False
            continue
        if device.name in names:
            item.error(f"device name {device.name!r} is already used by devices"
                       f"[{names[device.name]}]")
            ok = False
            continue
        names[device.name] = index
        devices.append(device)
    if ok and not devices and not cur.problems:
        cur.error("no devices configured: add at least one device")
    if ok:
        ok = _check_across_devices(cur, devices, names)
    return tuple(devices) if ok else None


def _check_across_devices(cur: Cursor, devices: list[DeviceConfig], index_of: dict[str, int]
                          ) -> bool:
    """Run each driver kind's cross-device rules; report problems at the device."""
    items = dict(cur.items())
    ok = True
    for kind in sorted({d.driver for d in devices}):
        entry = DRIVERS[kind]
        if entry.check_devices is None:
            continue
        of_kind = [d for d in devices if d.driver == kind]
        for position, message in load(entry.check_devices)(of_kind):
            index = index_of[of_kind[position].name]
            _labelled(items[index]).error(message)
            ok = False
    return ok


def _labelled(cur: Cursor) -> Cursor:
    """Label a device's path with its name, for readable errors (``devices[2] (boiler)``)."""
    if isinstance(cur.node, yaml.MappingNode):
        for key_node, value_node in cur.node.value:
            if key_node.value == "name" and isinstance(value_node, yaml.ScalarNode):
                return cur.relabel(value_node.value)
    return cur


_DEVICE_KEYS = {"name", "driver", "connection", "points"}
_DEVICE_OPTIONAL = {"interval_s", "reconnect_initial_s", "reconnect_max_s"}


def _parse_device(cur: Cursor) -> DeviceConfig | None:
    name: Any = MISSING
    keys = cur.mapping(required=_DEVICE_KEYS, optional=_DEVICE_OPTIONAL)
    if keys is None:
        return None
    if "name" in keys:
        name = keys["name"].str(pattern=IDENTIFIER, what="device name (letters, digits, _ . -)")
    interval_s = _opt(keys, "interval_s", "float", 1.0, minimum=0.001, maximum=86400)
    reconnect_initial_s = _opt(keys, "reconnect_initial_s", "float", 1.0, minimum=0.01)
    reconnect_max_s = _opt(keys, "reconnect_max_s", "float", 60.0, minimum=0.01)
    driver_kind = keys["driver"].str() if "driver" in keys else MISSING
    entry = DRIVERS.get(driver_kind) if driver_kind is not MISSING else None
    if driver_kind is not MISSING and entry is None:
        keys["driver"].error(f"unknown driver {driver_kind!r}; known: {', '.join(sorted(DRIVERS))}")
    parsed = None
    if entry is not None and "connection" in keys and "points" in keys:
        parser = load(entry.config_parser)
        parsed = parser(keys["connection"], keys["points"],
                        default_interval_s=interval_s if interval_s is not MISSING else 1.0)
    if (parsed is None or MISSING in (name, interval_s, reconnect_initial_s, reconnect_max_s)
            or driver_kind is MISSING):
        return None
    connection, points = parsed
    return DeviceConfig(name=name, driver=driver_kind, connection=connection, points=points,
                        reconnect_initial_s=reconnect_initial_s,
                        reconnect_max_s=reconnect_max_s)
