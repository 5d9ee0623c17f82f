#!/usr/bin/env bash
# GPU smoke run (issue #15): on a machine with CUDA, in one go,
#   1. the CUDA tests (those named cuda/gpu: they skip without CUDA, so here they must *run*);
#   2. benchmarks/gpu_smoke.py: every objective trains a tiny DKF on the GPU, checkpoint GPU -> CPU;
#   3. training throughput on the GPU: benchmarks/distributed.py --device cuda (DKF, FIVO, synthetic
#      data, no data set needed), 1 process, and 2 processes (nccl) when there are 2+ GPUs.
#      (benchmarks/throughput.py has no device option and needs JSB: it measures the CPU only.)
# On a machine without CUDA it says so and exits 0.
# Usage: benchmarks/gpu_smoke.sh            Env: PY (default .venv/bin/python, else python3)
# Exit status: 0 if every step passed (or no CUDA), else the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "CUDA not available (or torch not importable by $PY): GPU smoke run skipped"
  exit 0
fi
uptime
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices:",
  [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
failed=0
step() {  # step NAME CMD...: run, time, and count a failure
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  if "$@"; then echo "=== $name: ok ($((SECONDS - t0))s)"
  else echo "=== $name: FAILED ($((SECONDS - t0))s)"; failed=$((failed + 1)); fi
}

# -rs lists skips: on a GPU machine only test_cuda_refused_without_cuda ("CUDA is available") may skip
step "cuda tests" "$PY" -m pytest tests -m "not slow" -k "cuda or gpu" -q -rs -p no:cacheprovider
step "gpu_smoke.py" "$PY" benchmarks/gpu_smoke.py --steps 5
step "throughput (1 GPU)" "$PY" benchmarks/distributed.py --device cuda --nprocs 1 --epochs 3
if [ "$NGPU" -ge 2 ]; then
  step "throughput (1 vs 2 GPUs, nccl)" "$PY" benchmarks/distributed.py --device cuda --nprocs 1 2 --epochs 3
fi
echo; echo "gpu_smoke.sh: $failed failed step(s)"
exit "$failed"
