#!/usr/bin/env bash
# Run the test suite in the project's cached venv (built by scripts/bootstrap.sh).
#
#   bash scripts/test.sh                 # = pytest -q
#   bash scripts/test.sh -k pipeline -x  # any pytest arguments
#
# CPU and offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set; OMP_NUM_THREADS defaults to 2.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

t0=$SECONDS
VENV="$(bash scripts/bootstrap.sh | tail -n1)"
t_bootstrap=$((SECONDS - t0))
echo "[test] bootstrap took ${t_bootstrap}s ($VENV)" >&2

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1

if [[ $# -eq 0 ]]; then
    set -- -q
fi

t1=$SECONDS
rc=0
"$VENV/bin/python" -m pytest "$@" || rc=$?
t_tests=$((SECONDS - t1))
echo "[test] bootstrap ${t_bootstrap}s, tests ${t_tests}s, pytest exit code ${rc}" >&2

if [[ $rc -eq 5 ]]; then
    echo "[test] ERROR: pytest collected no tests (exit code 5). This project must have tests." >&2
    exit 1
fi
exit "$rc"
