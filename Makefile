# The two commands of the README: `make demo` and `make test`. Each does its own set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: demo lab test check setup-lab setup-test system-deps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup-lab: $(BIN)/python
	$(BIN)/pip install -q -e '.[lab]'

setup-test: $(BIN)/python system-deps .venv-checkov/bin/checkov
	$(BIN)/pip install -q -e '.[test]'

# checkov's dependencies conflict with ours: it gets a virtualenv of its own.
.venv-checkov/bin/checkov:
	$(PY) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q --upgrade pip
	.venv-checkov/bin/pip install -q checkov==3.3.30

# promtool and prometheus (tests start them on 127.0.0.1); jq for the benchmark.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v jq >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus jq; }

# The main job on bundled data: the lab's captured Envoy logs, every scenario, analysed.
demo: setup-lab
	$(BIN)/wslog analyze 'testdata/lab/json/*/*.log'

# The lab live: real Envoy sidecars on 127.0.0.1, then the analysis of what they wrote.
lab: setup-lab
	$(BIN)/wslog lab run h1 h2 h2-no-allow-connect --out $(OUT)/lab
	$(BIN)/wslog analyze '$(OUT)/lab/*/*.log'

check: setup-test
	$(BIN)/ruff check analyzer exporter wslog tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check
	$(BIN)/python -m pytest -q

bench: setup-test
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .venv-checkov $(OUT) .pytest_cache .mypy_cache .ruff_cache
