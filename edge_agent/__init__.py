"""edge-agent: polls field devices, keeps every reading on local disk, forwards it to the
city platform over MQTT with mutual TLS."""

__version__ = "0.1.0"

__all__ = ["__version__"]
