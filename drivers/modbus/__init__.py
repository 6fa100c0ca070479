"""Modbus TCP, RTU (serial) and RTU-over-TCP drivers; see docs/modbus.md."""
