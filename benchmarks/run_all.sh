#!/usr/bin/env bash
# Every throughput figure in BENCHMARKS.md, in one run on an otherwise idle machine.
# Usage: benchmarks/run_all.sh DATA_DIR [EPOCHS]   (Pyro's example needs PYRO_DMM_PY, see ../shared/bench)
set -uo pipefail
DATA=${1:?usage: $0 DATA_DIR [EPOCHS]}
EPOCHS=${2:-3}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
uptime
if [ -n "${PYRO_DMM_PY:-}" ]; then
  VENV=${VENV:-$PWD/.venv} bash "${BASELINE:-../shared/bench/pyro_dmm_baseline.sh}" "$DATA/jsb_chorales.pickle" "$EPOCHS" | tail -1
fi
for obj in elbo pyro_elbo iwae fivo; do
  echo "dkf(pyro-config) $obj: $($PY benchmarks/throughput.py --model dkf --pyro-config --objective $obj --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
done
# the same model with length bucketing (the Trainer's default): less padding per minibatch
for obj in elbo fivo; do
  echo "dkf(pyro-config) $obj bucketed: $($PY benchmarks/throughput.py --model dkf --pyro-config --bucket --objective $obj --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
done
[ "${QUICK:-0}" = 1 ] && { uptime; exit 0; }
for model in vrnn srnn dkf; do
  for obj in elbo iwae fivo; do
    echo "$model $obj bucketed: $($PY benchmarks/throughput.py --model $model --objective $obj --bucket --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
  done
done
uptime
