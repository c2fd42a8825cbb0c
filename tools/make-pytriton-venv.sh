#!/usr/bin/env bash
# Build .venv-pytriton: NVIDIA PyTriton (a real Triton Inference Server, here on the CPU) for
# the tests marked ``pytriton`` (tests/servers/pytriton_centernet.py): the detector's Triton
# path with system shared memory, which MLServer lacks. `make test` runs this first.
#
# Why a venv of its own, from Debian's /usr/bin/python3: nvidia-pytriton 0.7.0 needs numpy<2
# (edgeva's .venv has numpy 2), and its Python backend stub links against the system
# libpython3.X.so.1.0, which a pyenv-built Python does not provide. Missing Debian pieces
# (python3, python3-venv, libpython3.X) are installed with apt-get when root (or sudo).
#
# PYTRITON_OPTIONAL=1 (what `make test` sets): on a machine that cannot install it (no
# Debian python3 and no apt, no wheel for this CPU, no package index), say why on stderr,
# record the reason in .venv-pytriton.unavailable (the tests print it when they skip) and
# exit 0. Without it, such a failure is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-/usr/bin/python3}"
VENV="${1:-.venv-pytriton}"
REASON_FILE="$VENV.unavailable"

unavailable() {
    echo "make-pytriton-venv: cannot build $VENV: $*" >&2
    if [ "${PYTRITON_OPTIONAL:-0}" = 1 ]; then
        rm -rf "$VENV"
        echo "$*" > "$REASON_FILE"
        echo "make-pytriton-venv: the Triton shared-memory tests will SKIP on this machine" >&2
        exit 0
    fi
    exit 1
}

case "$(uname -m)" in
    x86_64 | aarch64) ;;
    *) unavailable "nvidia-pytriton ships wheels for x86_64 and aarch64 only, not $(uname -m)" ;;
esac

# Debian's pieces: the interpreter, its venv/ensurepip, and the shared libpython.
py_ok() {  # venv + ensurepip importable, and the shared libpython3.X.so.1.0 in place
    [ -x "$PY" ] && "$PY" -c "
import ensurepip, os, sys, sysconfig, venv
lib = os.path.join(sysconfig.get_config_var('LIBDIR') or '', sysconfig.get_config_var('INSTSONAME') or '')
sys.exit(0 if os.path.isfile(lib) else 1)" >/dev/null 2>&1
}
if ! py_ok; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    command -v apt-get >/dev/null 2>&1 || unavailable "$PY (with venv and libpython) is missing and there is no apt-get"
    [ -z "$SUDO" ] || command -v sudo >/dev/null 2>&1 || unavailable "$PY (with venv and libpython) is missing; apt-get needs root"
    pkgs=(python3 python3-venv)
    if [ -x "$PY" ]; then
        ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        pkgs+=("python$ver-venv" "libpython$ver")
    fi
    echo "make-pytriton-venv: installing ${pkgs[*]}"
    $SUDO apt-get update -qq || unavailable "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
        || unavailable "apt-get install ${pkgs[*]} failed"
    if [ -x "$PY" ] && ! py_ok; then  # python3 came just now: its libpython too
        ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "python$ver-venv" "libpython$ver" >/dev/null || unavailable "apt-get install libpython$ver failed"
    fi
    py_ok || unavailable "$PY still lacks venv or libpython after apt-get"
fi

rm -rf "$VENV"
"$PY" -m venv "$VENV" || unavailable "$PY -m venv failed"
"$VENV/bin/pip" install --quiet --upgrade pip || unavailable "pip upgrade failed (no package index?)"
"$VENV/bin/pip" install --quiet "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime \
    || unavailable "pip install nvidia-pytriton==0.7.0 failed (no wheel for this platform, or no package index)"
"$VENV/bin/python" -c "import pytriton, numpy, onnxruntime; print('pytriton ok, numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)" \
    || unavailable "pytriton does not import"
rm -f "$REASON_FILE"
touch "$VENV/.installed"
