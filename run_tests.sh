#!/usr/bin/env bash
# Run the test suite: ./run_tests.sh [pytest args]. Installs what it needs into ./.venv on first use.
# Tests that need ../shared/data skip with a reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")"
source analysis/bootstrap_env.sh
exec "$PY" -m pytest -ra "$@"
