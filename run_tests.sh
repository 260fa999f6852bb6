#!/usr/bin/env bash
# Run the test suite: ./run_tests.sh [--quick] [pytest args]. Installs what it needs into ./.venv on first use.
# --quick: the unit tests only (no pipeline, notebook, install or type-check runs; README states its time).
# Tests that need ../shared/data skip with a reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")"
source analysis/bootstrap_env.sh
if [[ "${1:-}" == "--quick" ]]; then
  shift
  exec "$PY" -m pytest -ra -q -m "not slow and not e2e" "$@"
fi
exec "$PY" -m pytest -ra "$@"
