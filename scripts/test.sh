#!/usr/bin/env bash
# The test suite: creates .venv, starts the local Slurm (three nodes) (root only; installs Debian's packages
# the first time), then runs pytest. Extra arguments go to pytest (one pytest run, as given).
#
# Without arguments the suite runs as up to three pytest processes side by side, because most of its
# time is waiting (Slurm's minute-granular time limits and requeues, leases, Hydra start-ups): one
# process kept about one of the two cores busy.
#   slurm        the tests marked `slurm`, one after another: they share the one cluster, and
#                several assert on what it schedules and when
#   rest         everything else except `safedreamer` (Hydra's launcher suites first, in a pytest process of their own)
#   safedreamer  the real SafeDreamer (only with SDS_SAFEDREAMER_PYTHON set, as .ci/run does), at nice
#                19: the other two have tests that time a stall or a lease and must see the machine as
#                they would alone; SafeDreamer takes the idle share (its cells' stall_after is 30 min).
#                Its cells keep that niceness in their own sessions (tasks/external/runner.py: autogroup).
# Each stream's output is printed when all have ended, in that order; the exit code is nonzero if any
# failed. (pytest-xdist's --dist loadgroup would be the library for this, but with pytest 9.2 it
# silently stops grouping: pytest-xdist issue #1386.)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/venv.sh"
cd "$ROOT"
# Debian's chromium for the report page's browser test (tests/test_report_html.py); root only, once.
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium (report.html is tested in a headless browser)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if [ "$(id -u)" = 0 ] && [ "${SDS_NO_SLURM:-0}" != 1 ]; then
  bash "$ROOT/scripts/start-slurm.sh"
else
  echo "[test] not starting Slurm (not root or SDS_NO_SLURM=1): tests marked 'slurm' will be skipped" >&2
fi

if [ $# -gt 0 ]; then
  exec python -m pytest "$@"
fi

names=(slurm rest)
markers=("slurm and not safedreamer" "not slurm and not safedreamer")
nices=(0 0)
if [ -n "${SDS_SAFEDREAMER_PYTHON:-}" ]; then
  names+=(safedreamer); markers+=("safedreamer"); nices+=(19)
fi
logdir=$(mktemp -d -t sds-tests.XXXXXX)
pids=()
for i in "${!names[@]}"; do
  if [ "${names[$i]}" = rest ]; then
    # Hydra's own launcher suites assume a fresh process (Hydra keeps process-wide state, e.g. its
    # version_base, that earlier in-process tests change): they run in a pytest process of their
    # own, first, as hydra-submitit-launcher runs them; then the rest. Exit nonzero if either failed.
    ( a=0; b=0
      nice -n "${nices[$i]}" python -m pytest -m "${markers[$i]}" -p no:cacheprovider tests/test_hydra_conformance.py || a=$?
      nice -n "${nices[$i]}" python -m pytest -m "${markers[$i]}" -p no:cacheprovider \
        --ignore=tests/test_hydra_conformance.py || b=$?
      [ "$a" = 0 ] && [ "$b" = 0 ] ) >"$logdir/${names[$i]}.log" 2>&1 &
  else
    nice -n "${nices[$i]}" python -m pytest -m "${markers[$i]}" -p no:cacheprovider \
      >"$logdir/${names[$i]}.log" 2>&1 &
  fi
  pids+=($!)
done
# SIGINT, not TERM: pytest then runs the tests' cleanups, which stop their sweeps and cell processes
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' INT TERM
echo "[test] ${#names[@]} pytest processes side by side: ${names[*]} (logs in $logdir; printed when all end)" >&2
codes=()
for i in "${!names[@]}"; do
  code=0
  wait "${pids[$i]}" || code=$?
  codes+=("$code")
  echo "[test] ${names[$i]} ended: exit $code" >&2
done
status=0
for i in "${!names[@]}"; do
  echo
  echo "=============================== ${names[$i]}: pytest -m \"${markers[$i]}\" ==============================="
  cat "$logdir/${names[$i]}.log"
  [ "${codes[$i]}" = 0 ] || status=1
done
rm -rf "$logdir"
summary=""
for i in "${!names[@]}"; do summary+="${names[$i]}: exit ${codes[$i]}; "; done
echo "[test] ${summary%; }" >&2
exit "$status"
