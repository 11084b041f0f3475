#!/usr/bin/env bash
# The test suite: creates .venv, starts the single-node Slurm (root only; installs Debian's packages
# the first time), then runs pytest. Extra arguments go to pytest (one pytest run, as given).
#
# Without arguments the suite runs on $SDS_TEST_WORKERS pytest-xdist workers (default 2): most tests
# wait (Hydra start-ups, Slurm's minute-granular time limits, leases), and one process kept about one
# core busy. The Slurm tests stay on one worker (tests/conftest.py: they share the one-node cluster).
# With the real SafeDreamer installed (SDS_SAFEDREAMER_PYTHON set, as .ci/run does), the `safedreamer`
# test runs in a separate pytest process beside the rest, at nice 19: the rest has tests that time a
# stall or a lease, and they must see the machine as they would alone; SafeDreamer takes the idle share
# (its cells' stall_after is 30 min). Its output is printed after the rest's; the exit code is nonzero
# if either run failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
if [ "$(id -u)" = 0 ] && [ "${SDS_NO_SLURM:-0}" != 1 ]; then
  bash "$ROOT/scripts/start-slurm.sh"
else
  echo "[test] not starting Slurm (not root or SDS_NO_SLURM=1): tests marked 'slurm' will be skipped" >&2
fi

if [ $# -gt 0 ]; then
  exec python -m pytest "$@"
fi
XDIST=(-n "${SDS_TEST_WORKERS:-2}" --dist loadgroup)
if [ -z "${SDS_SAFEDREAMER_PYTHON:-}" ]; then
  exec python -m pytest "${XDIST[@]}"
fi

sd_log=$(mktemp -t sds-safedreamer-tests.XXXXXX)
nice -n 19 python -m pytest -m safedreamer -p no:cacheprovider >"$sd_log" 2>&1 &
sd_pid=$!
# SIGINT, not TERM: pytest then runs the test's cleanup, which stops its sweeps and SafeDreamer processes
trap 'kill -INT "$sd_pid" 2>/dev/null || true' INT TERM
echo "[test] the safedreamer test runs beside the rest (pid $sd_pid); its output follows the rest's" >&2
rest=0
python -m pytest -m "not safedreamer" "${XDIST[@]}" || rest=$?
sd=0
wait "$sd_pid" || sd=$?
echo
echo "================================ the safedreamer test (-m safedreamer) ================================"
cat "$sd_log"
rm -f "$sd_log"
echo "[test] rest of the suite: exit $rest; safedreamer test: exit $sd" >&2
[ "$rest" = 0 ] && [ "$sd" = 0 ]
