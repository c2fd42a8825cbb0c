# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need; system packages (mosquitto, ffmpeg, openssl,
# iproute2) are installed with apt-get when missing and we are root (or have sudo).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLSERVER := .venv-mlserver/.installed
SECONDS ?= 60

.PHONY: demo test lint bench setup system nodered clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[ml,test]'
	touch $(STAMP)

# The test inference server (MLServer) lives in a venv of its own: it pins its own pydantic.
$(MLSERVER): tools/make-mlserver-venv.sh
	PYTHON=$(PY) tools/make-mlserver-venv.sh
	touch $(MLSERVER)

setup: system $(STAMP)

system:
	@tools/install-system-packages.sh

demo: setup
	$(BIN)/edgeva demo --seconds $(SECONDS) --json out/demo.json --out out

test: setup $(MLSERVER) nodered
	$(BIN)/python -m pytest -q

# Node-RED + Dashboard 2.0 (npm, into .nodered/) and chromium for tests/test_nodered*.py.
nodered:
	@tools/install-nodered.sh

lint: $(STAMP)
	$(BIN)/ruff check .

bench: setup
	$(BIN)/edgeva bench hop --json out/hop.json --plot out/hop.png
	$(BIN)/edgeva bench detector --json out/detector.json --plot out/detector.png
	$(BIN)/edgeva bench deploy --json out/deploy.json

clean:
	rm -rf $(VENV) .venv-mlserver .nodered out .pytest_cache
