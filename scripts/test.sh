#!/usr/bin/env bash
# The test suite: creates .venv, starts the single-node Slurm (root only; installs Debian's packages
# the first time), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
if [ "$(id -u)" = 0 ] && [ "${SDS_NO_SLURM:-0}" != 1 ]; then
  bash "$ROOT/scripts/start-slurm.sh"
else
  echo "[test] not starting Slurm (not root or SDS_NO_SLURM=1): tests marked 'slurm' will be skipped" >&2
fi
python -m pytest "$@"
