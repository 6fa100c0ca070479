#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, lints (ruff), checks
# types (mypy --strict, scripts/typecheck.sh), then runs pytest against the installed
# package. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
venv="${EDGE_AGENT_VENV:-.venv}"
"$venv/bin/ruff" check edge_agent drivers tests bench
EDGE_AGENT_VENV="$venv" scripts/typecheck.sh
# $venv/bin/pytest (not python -m pytest): the checkout must not shadow the installed wheel.
# pytest exits non-zero (5) when no test ran; set -e makes that a failure here too.
exec "$venv/bin/pytest" "$@"
