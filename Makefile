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

# The main job on the embedded default: boot the tiny guest and run a command in it.
demo: venv testkit image
	$(BIN)/vnix host check || true
	$(BIN)/vnix run --image tiny --cpus 2 --memory 256M -- sh -c 'echo hello from $$(hostname); nproc; uname -r'

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
