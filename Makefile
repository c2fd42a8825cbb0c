# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need; system packages (mosquitto, ffmpeg) are
# installed with apt-get when missing and we are root (or have sudo).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup system clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[ml,test]'
	touch $(STAMP)

setup: $(STAMP) system

system:
	@tools/install-system-packages.sh

demo: setup
	$(BIN)/edgeva bench hop --quick --json out/hop.json --plot out/hop.png

test: setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: setup
	$(BIN)/edgeva bench hop --json out/hop.json --plot out/hop.png

clean:
	rm -rf $(VENV) out .pytest_cache
