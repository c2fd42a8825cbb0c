# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need; system packages (mosquitto, ffmpeg, openssl,
# iproute2) are installed with apt-get when missing and we are root (or have sudo).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLSERVER := .venv-mlserver/.installed
PYTRITON := .venv-pytriton/.installed
SECONDS ?= 60

.PHONY: demo test lint bench setup system clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[ml,test]'
	touch $(STAMP)

# The test inference server (MLServer) lives in a venv of its own: it pins its own pydantic.
$(MLSERVER): tools/make-mlserver-venv.sh
	PYTHON=$(PY) tools/make-mlserver-venv.sh
	touch $(MLSERVER)

# A real Triton (PyTriton, on the CPU) for the detector's system-shared-memory tests. Optional
# only where it cannot be installed: the script then says why and the tests print it as they skip.
$(PYTRITON): tools/make-pytriton-venv.sh
	PYTRITON_OPTIONAL=1 tools/make-pytriton-venv.sh

setup: system $(STAMP)

system:
	@tools/install-system-packages.sh

demo: setup
	$(BIN)/edgeva demo --seconds $(SECONDS) --json out/demo.json --out out

test: setup $(MLSERVER) $(PYTRITON)
	$(BIN)/python -m pytest -q -rfEs

lint: $(STAMP)
	$(BIN)/ruff check .

bench: setup
	$(BIN)/edgeva bench hop --json out/hop.json --plot out/hop.png
	$(BIN)/edgeva bench detector --json out/detector.json --plot out/detector.png
	$(BIN)/edgeva bench deploy --json out/deploy.json

clean:
	rm -rf $(VENV) .venv-mlserver .venv-pytriton .venv-pytriton.unavailable out .pytest_cache
