#!/usr/bin/env bash
# Create .venv with Python 3.10 and install the package (idempotent; fast when nothing changed).
# Sourced by scripts/demo.sh and scripts/test.sh. Python 3.10 is required: safety-gymnasium 1.0.0
# does not import on 3.11+ (a dataclass mutable-default error).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SDS_VENV:-$ROOT/.venv}

find_python310() {
  for c in "${SDS_PYTHON:-}" python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 \
           /root/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [ -n "$c" ] || continue
    p=$(command -v "$c" 2>/dev/null || true)
    [ -n "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null && { echo "$p"; return 0; }
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then
  PY=$(find_python310) || {
    echo "error: Python 3.10 not found (looked for \$SDS_PYTHON, python3.10 on PATH, ~/.pyenv/versions/3.10*)." >&2
    echo "  cause: safety-gymnasium 1.0.0 only imports on Python 3.10." >&2
    echo "  fix:   install it (e.g. 'pyenv install 3.10.13') or point SDS_PYTHON at a python3.10 binary." >&2
    exit 1
  }
  echo "[venv] creating $VENV with $PY"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the dependency declarations changed.
STAMP="$VENV/.sds-installed"
WANT=$(cat "$ROOT/setup.cfg" "$ROOT/requirements/no-deps.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[venv] installing dependencies (about a minute)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VENV/bin/pip" install -q --no-deps -r "$ROOT/requirements/no-deps.txt" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install -q -e "$ROOT[dev]" 2>&1 | grep -vE "^WARNING: Location|^ERROR: pip's dependency resolver|^gymnasium-robotics 1.2.2 requires" || true
  # a venv from before the search: hydra-optuna-sweeper pinned optuna<3 and is replaced by hydra/sweeper=sds_optuna
  "$VENV/bin/pip" uninstall -q -y hydra-optuna-sweeper >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import safety_gymnasium, jax, hydra, submitit, optuna, safedreamer_sweep" 2>/dev/null || {
    echo "error: the install in $VENV is incomplete (import check failed). Re-run with 'rm -rf $VENV' to start clean." >&2
    "$VENV/bin/python" -c "import safety_gymnasium, jax, hydra, submitit, optuna, safedreamer_sweep"
    exit 1
  }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
