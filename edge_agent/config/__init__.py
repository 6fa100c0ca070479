"""Gateway configuration: one YAML file, validated fully before any I/O."""

from .loader import load_config, parse_config
from .model import (
    AgentConfig,
    BufferConfig,
    DeviceConfig,
    Durability,
    GatewayConfig,
    MqttVersion,
    OverflowPolicy,
    PointBase,
    Security,
    TlsConfig,
    UplinkConfig,
)
from .nodes import ConfigInvalid, Cursor, Problem

__all__ = [
    "AgentConfig",
    "BufferConfig",
    "ConfigInvalid",
    "Cursor",
    "DeviceConfig",
    "Durability",
    "GatewayConfig",
    "MqttVersion",
    "OverflowPolicy",
    "PointBase",
    "Problem",
    "Security",
    "TlsConfig",
    "UplinkConfig",
    "load_config",
    "parse_config",
]
