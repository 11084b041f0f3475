#!/usr/bin/env bash
# Lint and type-check (seconds): ruff (pyproject.toml [tool.ruff]) over the whole tree, mypy (setup.cfg [mypy])
# over the package and the plugins. .ci/run runs it before the tests; creates .venv like the other scripts.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
t0=$(date +%s)
python -m ruff check .
python -m mypy safedreamer_sweep hydra_plugins
echo "[lint] ruff and mypy clean in $(( $(date +%s) - t0 )) s" >&2
