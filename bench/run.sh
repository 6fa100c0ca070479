#!/usr/bin/env bash
# Runs the end-to-end benchmark with the project's virtualenv (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
exec "${EDGE_AGENT_VENV:-.venv}/bin/python" bench/e2e.py "$@"
