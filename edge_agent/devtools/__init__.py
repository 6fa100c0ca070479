"""Tools for the demo, the tests and the benchmark: a simulated field site, a local
Mosquitto broker with its certificates, and a subscriber that watches what the platform
would receive. Not used by the agent itself."""
