#!/usr/bin/env bash
# Sets up what the tests need (system Mesa for SAPIEN when root, .venv with every extra), then runs
# the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_sims.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
