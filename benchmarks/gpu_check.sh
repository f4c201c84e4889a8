#!/usr/bin/env bash
# The GPU check: one run, one JSON (benchmarks/gpu_check.py), then the gpu-marked tests. Installs nothing.
#   benchmarks/gpu_check.sh [--quick] [--data ZIP]      (extra arguments go to gpu_check.py)
# Python: $PYTHON, else the checkout's .venv, else python3 (a GPU machine's own, with torch and onnxruntime).
# Output: $OUT/gpu_check.json when $OUT is set (the device machine's return folder), else benchmarks/results/.
# The whole check stays under 8 minutes: the measurements stop starting new sections after 420 s and are
# killed at 450 s; the tests get 25 s.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 450 "$PY" benchmarks/gpu_check.py --budget-s 420 --out "$DEST/gpu_check.json" "$@" 2>&1 | tee "$DEST/gpu_check.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "gpu_check.py ran past 450 s and was stopped: $DEST/gpu_check.json may be missing"
timeout 25 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/integration/test_gpu_path.py 2>&1 | tail -15 | tee "$DEST/gpu_tests.log"
exit "$status"
