#!/usr/bin/env bash
# Build .venv-pytriton: NVIDIA PyTriton (a real Triton Inference Server, here on the CPU) for
# the tests marked ``pytriton`` (tests/servers/pytriton_centernet.py). Optional: those tests
# skip where this venv is absent.
#
# Why a venv of its own, from Debian's /usr/bin/python3: nvidia-pytriton 0.7.0 needs numpy<2
# (edgeva's .venv has numpy 2), and its bundled tritonserver binary links against the system
# libpython, which a pyenv-built Python does not provide.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-/usr/bin/python3}"
VENV="${1:-.venv-pytriton}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime
"$VENV/bin/python" -c "import pytriton, numpy, onnxruntime; print('pytriton ok, numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
