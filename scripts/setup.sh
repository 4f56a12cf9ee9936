#!/usr/bin/env bash
# Creates .venv and installs pirl with what it needs. Idempotent: a second call only checks.
# On a machine without an NVIDIA GPU it installs PyTorch's CPU build first and pins it,
# so that no dependency can pull multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${PIRL_TORCH_SPEC:-torch==2.13.0}
EXTRAS=${PIRL_EXTRAS:-sims,pi0,ray,dev}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pirl-installed
hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
# the stamp holds the install's hash and extras; a request for extras already installed is a no-op, and a
# new install keeps the earlier extras (scripts/demo.sh after scripts/test.sh must not narrow the venv)
norm() { tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -; }
have=""
[ -f "$stamp" ] && have=$(cut -s -d' ' -f2 "$stamp" | norm)
EXTRAS=$(echo "$have,$EXTRAS" | norm)
if [ -f "$stamp" ] && [ "$(cut -d' ' -f1 "$stamp")" = "$hash" ] && [ "$EXTRAS" = "$have" ]; then
  exit 0
fi
want="$hash $EXTRAS"
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  $pip install -q "$TORCH_SPEC"
fi
# pin the torch already installed so nothing upgrades it to a CUDA build
tv=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$tv" > .venv/constraints.txt
$pip install -q -c .venv/constraints.txt -e ".[${EXTRAS}]"
# robomimic (via hf-libero) pulls a torchvision wheel built for another torch; it fails to load
# ("operator torchvision::nms does not exist") and transformers then cannot import SiglipVisionModel.
# pirl never uses torchvision: remove it when it does not import.
if .venv/bin/python -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('torchvision') else 1)" \
    && ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
  $pip uninstall -y -q torchvision
fi
echo "$want" > "$stamp"
