#!/usr/bin/env bash
# mypy --strict (configured in pyproject.toml) on the checkout's sources, laid out as the
# wheel installs them. drivers/ is the package edge_agent.drivers once installed
# (pyproject's package-dir), a mapping mypy cannot follow from a checkout, editable install
# or not: checked as a top-level `drivers`, every `edge_agent.drivers` import would be a
# silent Any (ignore_missing_imports). So mypy runs in a throwaway directory of symlinks
# (edge_agent/* and tests to the checkout's, edge_agent/drivers to drivers/), which works
# the same with an installed wheel (CI), an editable install or none.
# Messages name the checkout's files. Usage: scripts/typecheck.sh [mypy arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
venv="${EDGE_AGENT_VENV:-.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
layout="$(mktemp -d)"
trap 'rm -rf "$layout"' EXIT
mkdir "$layout/edge_agent"
ln -s "$root"/edge_agent/* "$layout/edge_agent/"
ln -s "$root/drivers" "$layout/edge_agent/drivers"
ln -s "$root/tests" "$layout/tests"
cd "$layout"
# The cache survives the throwaway directory (same relative paths): a rerun takes a second.
"$venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache/layout" \
  "$@" edge_agent tests | sed 's#^edge_agent/drivers/#drivers/#'
