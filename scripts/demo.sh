#!/usr/bin/env bash
# The main job on the embedded default: 4 configs x 2 seeds on SafetyPointGoal1-v0, short budgets,
# trained, evaluated ID and OOD, and reported. Extra arguments are Hydra overrides.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
python -m safedreamer_sweep -m "$@"
