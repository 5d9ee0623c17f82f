#!/usr/bin/env bash
# Create ./.venv and install deepstate with the pinned versions it is tested with.
# pip gets the constraints file in the same call: pyro-ppl's own `torch` requirement would
# otherwise let pip resolve a multi-GB CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
