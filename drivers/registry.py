"""Driver kinds by name, as dotted paths imported only when a device uses them.

Importing a protocol stack costs memory (asyncua alone ~48 MB), so nothing here imports a
driver at module load. A missing optional dependency becomes a :class:`DriverMissing`
error that names the extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["DRIVERS", "DriverEntry", "DriverMissing", "load"]


@dataclass(frozen=True, slots=True)
class DriverEntry:
    config_parser: str
    """``module:function`` that validates a device's ``connection`` and ``points``. It must
    not import the protocol library, so validation stays cheap."""
    driver: str
    """``module:class`` of the driver, constructed with the validated device config."""
    extra: str | None = None
    """pip extra that provides the protocol library, when it is optional."""
    check_devices: str | None = None
    """Optional ``module:function(devices) -> list[tuple[int, str]]`` run once over all
    validated devices of this kind (for rules across devices, such as every device on one
    serial bus agreeing on its baud rate); each result names a device index and a problem."""


DRIVERS: dict[str, DriverEntry] = {
    "modbus_tcp": DriverEntry(
        config_parser="edge_agent.drivers.modbus.config:parse_tcp_device",
        driver="edge_agent.drivers.modbus.driver:ModbusDriver",
        check_devices="edge_agent.drivers.modbus.config:check_devices",
    ),
    "modbus_rtu": DriverEntry(
        config_parser="edge_agent.drivers.modbus.config:parse_rtu_device",
        driver="edge_agent.drivers.modbus.driver:ModbusDriver",
        check_devices="edge_agent.drivers.modbus.config:check_devices",
    ),
    "modbus_rtu_over_tcp": DriverEntry(
        config_parser="edge_agent.drivers.modbus.config:parse_rtu_over_tcp_device",
        driver="edge_agent.drivers.modbus.driver:ModbusDriver",
        check_devices="edge_agent.drivers.modbus.config:check_devices",
    ),
}


class DriverMissing(Exception):
    """A configured driver cannot be imported (its optional dependency is not installed)."""


def load(dotted: str, *, extra: str | None = None) -> Any:
    """Import ``module:attribute`` lazily, translating import failures."""
    module_name, _, attribute = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'edge-agent[{extra}]')" if extra else ""
        raise DriverMissing(f"cannot import {module_name}: {exc}{hint}") from exc
    return getattr(module, attribute)
