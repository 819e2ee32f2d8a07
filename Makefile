# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out
# setuptools' notice about editable installs is for packagers, not for the first screen.
PIP := PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip

.PHONY: demo lab test check setup-lab setup-dev setup-test system-deps bench bench-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

setup-lab: $(BIN)/python
	$(PIP) install -q -e '.[lab]'

# Lint and type-check need no root and no system package.
setup-dev: $(BIN)/python
	$(PIP) install -q -e '.[test]'

setup-test: setup-dev system-deps .venv-checkov/bin/checkov

# checkov's dependencies conflict with ours: it gets a virtualenv of its own.
.venv-checkov/bin/checkov:
	$(PY) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q --upgrade pip
	.venv-checkov/bin/pip install -q checkov==3.3.30

# promtool, prometheus and nats-server (tests start them on 127.0.0.1); jq for the benchmark.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v jq >/dev/null && command -v nats-server >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus jq nats-server; }

# The main job on bundled data: the lab's captured Envoy logs, every scenario, analysed.
demo: setup-lab
	$(BIN)/wslog analyze 'testdata/lab/json/*/*.log'

# The lab live: real Envoy sidecars on 127.0.0.1, then the analysis of what they wrote.
lab: setup-lab
	$(BIN)/wslog lab run h1 h2 h2-no-allow-connect --out $(OUT)/lab
	$(BIN)/wslog analyze '$(OUT)/lab/*/*.log'

check: setup-dev
	$(BIN)/ruff check analyzer exporter wslog lab tests bench dashboards
	$(BIN)/ruff format --check analyzer exporter wslog lab tests bench dashboards
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup-test check
	$(BIN)/python -m pytest -q

# mtail (Debian) is the exporter's baseline in bench/run.py; the benchmark only, not `make test`.
bench-deps:
	@command -v mtail >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mtail; }

bench: setup-test bench-deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) .venv-checkov $(OUT) .pytest_cache .mypy_cache .ruff_cache
