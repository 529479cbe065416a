# vnix — `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export VNIX_HOME ?= $(HOME)/.local/share/vnix

.PHONY: all deps venv web testkit image demo lint test test-fast test-slow bench clean

all: venv testkit

deps: .deps.stamp
.deps.stamp: scripts/install-deps.sh
	scripts/install-deps.sh
	touch $@

venv: $(BIN)/.installed web
$(BIN)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The dashboard's front-end libraries: npm packages at the versions pinned in web/package-lock.json,
# copied into the package's static dir (served by the manager; nothing comes from a CDN).
WEB_VENDOR := src/vnix/web/static/vendor
web: $(WEB_VENDOR)/.stamp
$(WEB_VENDOR)/.stamp: web/package.json web/package-lock.json | deps
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -rf $(WEB_VENDOR) && mkdir -p $(WEB_VENDOR)/xterm $(WEB_VENDOR)/novnc
	cp web/node_modules/htmx.org/dist/htmx.min.js $(WEB_VENDOR)/
	cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css $(WEB_VENDOR)/
	cp web/node_modules/@xterm/xterm/lib/xterm.js web/node_modules/@xterm/xterm/css/xterm.css $(WEB_VENDOR)/xterm/
	cp web/node_modules/@xterm/addon-fit/lib/addon-fit.js $(WEB_VENDOR)/xterm/
	cp -r web/node_modules/@novnc/novnc/core web/node_modules/@novnc/novnc/vendor $(WEB_VENDOR)/novnc/
	cp web/node_modules/@novnc/novnc/LICENSE.txt $(WEB_VENDOR)/novnc/
	touch $@

testkit: deps
	$(MAKE) -s -C guests/testkit

image: venv
	$(BIN)/vnix image build tiny
	$(BIN)/vnix image build tiny-arm64

# The main job on the embedded default: the manager and a local agent (`vnix up`), then the
# 4-node virtual cluster of examples/hpc-cluster.xml, each node on its console within a minute.
demo: venv web testkit image
	$(BIN)/vnix host check || true
	@$(BIN)/vnix down >/dev/null 2>&1 || true  # a previous demo's manager
	$(BIN)/vnix up --detach
	@$(BIN)/vnix cluster delete hpc >/dev/null 2>&1 || true  # and its cluster
	$(BIN)/vnix cluster create examples/hpc-cluster.xml
	$(BIN)/vnix cluster wait hpc --console --timeout 60
	@echo "consoles: vnix vm console hpc-head-0 (or the dashboard above); cluster: vnix cluster show hpc"
	@echo "stop: vnix cluster delete hpc; vnix down"

lint: venv
	$(BIN)/ruff check -q src tests benchmarks

test: venv web testkit image lint
	$(BIN)/pytest -m "not slow" -q

test-slow: venv testkit image
	$(BIN)/pytest -m slow -q

test-fast: venv testkit
	$(BIN)/pytest tests/unit -q

bench: venv testkit
	$(BIN)/python benchmarks/boot.py

clean:
	rm -rf $(VENV) .deps.stamp guests/testkit/build web/node_modules $(WEB_VENDOR)
