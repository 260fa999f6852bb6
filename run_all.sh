#!/usr/bin/env bash
# Run the whole study: ./run_all.sh [--profile demo|cifar10|...] [--force] [--data-root DIR] [--from-cache DIR]
# Installs what it needs into ./.venv on first use. See `./run_all.sh --help`.
set -euo pipefail
cd "$(dirname "$0")"
source analysis/bootstrap_env.sh
exec "$PY" -m analysis.run "$@"
