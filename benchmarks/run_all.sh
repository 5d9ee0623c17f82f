#!/usr/bin/env bash
# Every throughput figure in BENCHMARKS.md, in one run on an otherwise idle machine.
# Usage: benchmarks/run_all.sh DATA_DIR [EPOCHS]   (Pyro's example needs PYRO_DMM_PY, see ../shared/bench)
# Env: ROUNDS (default 2): Pyro's example and our ELBO alternate this many times (machine drift);
#      QUICK=1 stops after the Pyro-configuration rows.
set -uo pipefail
DATA=${1:?usage: $0 DATA_DIR [EPOCHS]}
EPOCHS=${2:-3}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
uptime
for r in $(seq "${ROUNDS:-2}"); do
  if [ -n "${PYRO_DMM_PY:-}" ]; then
    echo "round $r pyro dmm.py: $(VENV=${VENV:-$PWD/.venv} bash "${BASELINE:-../shared/bench/pyro_dmm_baseline.sh}" "$DATA/jsb_chorales.pickle" "$EPOCHS" | tail -1)"
  fi
  echo "round $r dkf(pyro-config) elbo: $($PY benchmarks/throughput.py --model dkf --pyro-config --objective elbo --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
done
for obj in pyro_elbo iwae fivo; do
  echo "dkf(pyro-config) $obj: $($PY benchmarks/throughput.py --model dkf --pyro-config --objective $obj --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
done
# the same model with length bucketing (the Trainer's default): less padding per minibatch
for obj in elbo fivo; do
  echo "dkf(pyro-config) $obj bucketed: $($PY benchmarks/throughput.py --model dkf --pyro-config --bucket --objective $obj --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
done
# FIVO and IWAE relative to the ELBO, epochs interleaved in one process (robust to machine drift)
$PY benchmarks/objective_ratio.py --pyro-config --objectives elbo,iwae,fivo --rounds 4 --data-dir "$DATA" | tail -3
$PY benchmarks/objective_ratio.py --pyro-config --bucket --objectives elbo,iwae,fivo --rounds 4 --data-dir "$DATA" | tail -3
[ "${QUICK:-0}" = 1 ] && { uptime; exit 0; }
for model in vrnn srnn dkf; do
  for obj in elbo iwae fivo; do
    echo "$model $obj bucketed: $($PY benchmarks/throughput.py --model $model --objective $obj --bucket --epochs "$EPOCHS" --data-dir "$DATA" | tail -1)"
  done
done
uptime
