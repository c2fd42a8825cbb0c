#!/usr/bin/env bash
# Build .venv-mlserver: MLServer in a venv of its own, for the test inference server of
# tests/servers/mlserver_centernet (CI runs this once before pytest; tests needing it FAIL
# without it). MLServer pins its own fastapi/pydantic/grpc, so it must not share .venv.
#
# uvloop<0.22: MLServer's worker processes crash with uvloop 0.22+ (the test server also sets
# parallel_workers: 0, so either fix alone would do; both keep it robust).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${1:-.venv-mlserver}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "mlserver==1.7.1" onnxruntime "uvloop<0.22"
"$VENV/bin/mlserver" --version
"$VENV/bin/python" -c "import onnxruntime, uvloop; print('onnxruntime', onnxruntime.__version__, 'uvloop', uvloop.__version__)"
