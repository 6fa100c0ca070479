#!/usr/bin/env bash
# Quick start: simulated field devices -> edge-agent -> local Mosquitto over mutual TLS,
# with the telemetry printed as the platform receives it. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec "${EDGE_AGENT_VENV:-.venv}/bin/edge-agent" demo "$@"
