#!/usr/bin/env bash
# Sets up .venv if needed, then runs the default pipeline (`pirl demo`). Extra arguments go to it.
# The demo needs MetaWorld, and Ray for its two env-worker processes (runner.kind=ray).
set -euo pipefail
cd "$(dirname "$0")/.."
PIRL_EXTRAS=${PIRL_EXTRAS:-metaworld,ray,dev} bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec .venv/bin/pirl demo "$@"
