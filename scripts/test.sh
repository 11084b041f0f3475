#!/usr/bin/env bash
# The test suite: creates .venv, starts the single-node Slurm (root only; installs Debian's packages
# the first time), then runs pytest. Extra arguments go to pytest (one pytest run, as given).
#
# Without arguments, and with the real SafeDreamer installed (SDS_SAFEDREAMER_PYTHON set, as .ci/run
# does), the `safedreamer` test runs in a second pytest process beside the rest of the suite: it is one
# test of ~15 min whose SafeDreamer processes keep both cores compiling, while the rest of the suite
# keeps about one core busy (Hydra start-ups, tiny cells, Slurm waits). Its output is printed after the
# rest; the exit code is nonzero if either run failed. It runs at nice 19: the rest of the suite has
# tests that time a stall or a lease, and they must see the machine as they would alone; SafeDreamer
# takes the idle share (its cells' stall_after is 15 min).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
if [ "$(id -u)" = 0 ] && [ "${SDS_NO_SLURM:-0}" != 1 ]; then
  bash "$ROOT/scripts/start-slurm.sh"
else
  echo "[test] not starting Slurm (not root or SDS_NO_SLURM=1): tests marked 'slurm' will be skipped" >&2
fi

if [ $# -gt 0 ] || [ -z "${SDS_SAFEDREAMER_PYTHON:-}" ]; then
  exec python -m pytest "$@"
fi

sd_log=$(mktemp -t sds-safedreamer-tests.XXXXXX)
nice -n 19 python -m pytest -m safedreamer -p no:cacheprovider >"$sd_log" 2>&1 &
sd_pid=$!
# SIGINT, not TERM: pytest then runs the test's cleanup, which stops its sweeps and SafeDreamer processes
trap 'kill -INT "$sd_pid" 2>/dev/null || true' INT TERM
echo "[test] the safedreamer test runs beside the rest (pid $sd_pid); its output follows the rest's" >&2
rest=0
python -m pytest -m "not safedreamer" || rest=$?
sd=0
wait "$sd_pid" || sd=$?
echo
echo "================================ the safedreamer test (-m safedreamer) ================================"
cat "$sd_log"
rm -f "$sd_log"
echo "[test] rest of the suite: exit $rest; safedreamer test: exit $sd" >&2
[ "$rest" = 0 ] && [ "$sd" = 0 ]
