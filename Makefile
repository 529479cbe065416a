# vnix — `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export VNIX_HOME ?= $(HOME)/.local/share/vnix

.PHONY: all deps venv testkit image demo test test-fast test-slow bench clean

all: venv testkit

deps: .deps.stamp
.deps.stamp: scripts/install-deps.sh
	scripts/install-deps.sh
	touch $@

venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

testkit: deps
	$(MAKE) -s -C guests/testkit

image: venv
	$(BIN)/vnix image build tiny
	$(BIN)/vnix image build tiny-arm64

# The main job on the embedded default: the manager and a local agent (`vnix up`), then the
# 4-node virtual cluster of examples/hpc-cluster.xml, each node on its console within a minute.
demo: venv testkit image
	$(BIN)/vnix host check || true
	-@$(BIN)/vnix down >/dev/null 2>&1
	$(BIN)/vnix up --detach
	-@$(BIN)/vnix cluster delete hpc >/dev/null 2>&1
	$(BIN)/vnix cluster create examples/hpc-cluster.xml
	$(BIN)/vnix cluster wait hpc --console --timeout 60
	@echo "consoles: vnix vm console hpc-head-0 (or the dashboard above); cluster: vnix cluster show hpc"
	@echo "stop: vnix cluster delete hpc; vnix down"

test: venv testkit image
	$(BIN)/pytest -m "not slow" -q

test-slow: venv testkit image
	$(BIN)/pytest -m slow -q

test-fast: venv testkit
	$(BIN)/pytest tests/unit -q

bench: venv testkit
	$(BIN)/python benchmarks/boot.py

clean:
	rm -rf $(VENV) .deps.stamp guests/testkit/build
