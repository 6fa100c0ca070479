#!/usr/bin/env bash
# Installs what edge-agent needs on a fresh Debian / Raspberry Pi OS machine:
# system packages (python3-venv, mosquitto, socat) where missing, a virtualenv in .venv,
# and the project itself (built as a wheel and installed, so tests exercise what ships).
# Usage: scripts/setup.sh [extra]   (extra: dev for the test suite, demo for the demo)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-dev}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: edge-agent needs Python 3.11 or newer (found $(python3 --version))" >&2; exit 1; }

venv="${EDGE_AGENT_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
# A real (non-editable) install: the tests and the demo run the package as it ships.
"$venv/bin/python" -m pip install -q --disable-pip-version-check ".[${extra}]"
