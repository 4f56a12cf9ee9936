#!/usr/bin/env bash
# The checks that need a GPU, in one go (never run by CI), π0 first: full-size π0 / π0.5 (random weights) through
# `pirl train` on one GPU per training scope (memory vs the printed estimate, simulation / inference / update
# seconds), π0's batch-1 chunk latency eager vs torch.compile (CUDA graphs); then the CUDA tests (learner ranks on
# GPUs, GPU rollout workers), the vision-language rollout benchmark, the learner-rank benchmark (CPU cores) and π0's
# throughput benchmark.
# Needs torch with CUDA, transformers, metaworld + mujoco + gymnasium (EGL rendering), ray for the Ray steps. Wheels
# missing on the machine can travel in .whl/ (installed first when present).
#
#   bash bench/gpu_check.sh [LOG_DIR]      # logs and result files also copied to LOG_DIR (default: none)
#   ONLY="pi0_train pi0_latency" bash bench/gpu_check.sh    # a subset of the steps
#
# With 15 minutes of device time and 10 minutes per command, run it as two calls on the warm machine:
# ONLY="pi05_train pi0_latency" (~9 minutes on an H200: two compiles of ~2 minutes, two runs of ~2 minutes), then
# ONLY=pi0_train (two runs).
#
# Each step has a time limit so a hang cannot eat the machine; a failed step does not stop the next one.
set -u -o pipefail
cd "$(dirname "$0")/.."
LOG=${1:-}
export PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PYTHON:-python3}
rc=0
step() {  # step NAME SECONDS CMD...: runs CMD under a time limit, logs to LOG/NAME.log
  local name=$1 secs=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="pi0_train ...": a subset
  echo "=== $name ($(date -u +%H:%M:%S), limit ${secs}s): $*"
  if [ -n "$LOG" ]; then timeout "$secs" "$@" 2>&1 | tee "$LOG/$name.log"; else timeout "$secs" "$@" 2>&1; fi
  local r=$?
  echo "=== $name: rc $r"
  [ $r -eq 0 ] || rc=1
}
[ -n "$LOG" ] && mkdir -p "$LOG"
START=$(mktemp) && touch "$START"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# MuJoCo renders through EGL. Where the machine has only the NVIDIA driver's libEGL_nvidia (no glvnd dispatcher),
# glvnd's libEGL / libOpenGL can travel in .gl/ (Debian's libegl1, libglvnd0, libopengl0) with a vendor file.
if ! PYOPENGL_PLATFORM=egl $PY -c "from OpenGL import EGL; EGL.eglQueryString" >/dev/null 2>&1 && [ -d .gl ]; then
  nv=$(find / -xdev -name 'libEGL_nvidia.so.0' 2>/dev/null | head -1)
  export LD_LIBRARY_PATH="$PWD/.gl${nv:+:$(dirname "$nv")}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export __EGL_VENDOR_LIBRARY_FILENAMES="$PWD/.gl/10_nvidia.json"
fi
PYOPENGL_PLATFORM=egl $PY -c "from OpenGL import EGL; EGL.eglQueryString; print('EGL found')" || echo "no usable libEGL: MuJoCo cannot render"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step pi05_train 300 $PY bench/bench_pi0_train_gpu.py --variants pi05 --scopes all expert \
  --iterations ${PI0_ITERATIONS:-2} --name pi0_train_gpu_pi05
step pi0_latency 330 $PY bench/bench_pi0_gpu.py --variants ${LATENCY_VARIANTS:-pi0} --latency-only \
  --latency-cameras 3 --compile ${COMPILE_MODES:-reduce-overhead-all reduce-overhead-all-freeze} --compile-cameras 3 \
  --profile --warmup 2 --iters 5 --out bench/results/pi0_latency.json
step pi0_train 300 $PY bench/bench_pi0_train_gpu.py --variants pi0 --scopes all expert \
  --iterations ${PI0_ITERATIONS:-2} --name pi0_train_gpu_pi0

step gpu_tests 240 $PY -m pytest -q -p no:cacheprovider -rs tests/test_gpu_learner.py tests/test_gpu_ray.py tests/test_gpu_sft.py
step vla_rollout 240 $PY bench/bench_vla_rollout.py --num-envs 64 --env-workers 8 --episode-steps 100 --repeats 1 \
  --threads 4 --act-batches 1 8 64 256
step learner 150 $PY bench/bench_learner.py --worlds 2 4 8 --samples 4096 --hidden 1024 --repeats 2  # the CPU cores
step pi0_gpu 150 $PY bench/bench_pi0_gpu.py --variants pi0 --batches 8 32 --warmup 1 --iters 3
if [ -n "$LOG" ]; then  # the result files this run wrote (at most 8 files come back from a device call)
  find bench/results -maxdepth 1 -type f -newer "$START" -exec cp {} "$LOG"/ \;
fi
exit $rc
