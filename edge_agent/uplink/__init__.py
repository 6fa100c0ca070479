"""The uplink: MQTT over (mutual) TLS and the forwarder that feeds it from the buffer."""
