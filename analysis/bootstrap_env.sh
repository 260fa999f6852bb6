# Sourced by run_all.sh and run_tests.sh: make sure a Python with the project's dependencies exists
# and export PY pointing at it. Uses ./.venv (created on first use with `pip install -e .[notebooks,test]`);
# set OOD_PYTHON=/path/to/python to use an interpreter you manage yourself (conda: see environment.yml).
# Re-installs only when pyproject.toml changed since the last successful install.
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${OOD_PYTHON:-}" ]]; then
  PY="$OOD_PYTHON"
else
  _venv="$_repo/.venv"
  _stamp="$_venv/.installed-$(sha256sum "$_repo/pyproject.toml" | cut -c1-16)"
  if [[ ! -f "$_stamp" ]]; then
    _base="${PYTHON:-python3}"
    if ! "$_base" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "error: Python >= 3.10 is needed (tried '$_base'; set PYTHON=/path/to/python3)" >&2; exit 1
    fi
    echo "[setup] creating $_venv and installing the project (first run only; torch is large)..." >&2
    [[ -x "$_venv/bin/python" ]] || "$_base" -m venv "$_venv"
    _log="$_venv/install.log"
    if ! { "$_venv/bin/python" -m pip install -q --upgrade pip && \
           "$_venv/bin/python" -m pip install -q -e "$_repo[notebooks,test]"; } >"$_log" 2>&1; then
      tail -n 40 "$_log" >&2; echo "error: installing the project failed; full log: $_log" >&2; exit 1
    fi
    echo "[setup] done (log: $_log)" >&2
    "$_venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
    rm -f "$_venv"/.installed-*
    touch "$_stamp"
  fi
  PY="$_venv/bin/python"
fi
export PY
