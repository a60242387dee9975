# egress-proxy: `make run` starts a proxy with a demo connector; `make test` runs everything.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export EGRESS_HOME ?= $(CURDIR)/.egress
LISTEN ?= 127.0.0.1:8080
ADMIN ?= 127.0.0.1:9090

.PHONY: install run demo test lint format unit e2e bench docs clean

# An interpreter >= 3.12: python3.13, python3.12, python3, then pyenv's versions.
PYTHON ?= $(shell ./scripts/find-python)

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.12 is required (install python3.12, or: pyenv install 3.12)" >&2; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/egress init
	DEMO_API_KEY=$${DEMO_API_KEY:-demo-secret-change-me} $(BIN)/egress apply -f config/demo.yaml
	$(BIN)/egress run --listen $(LISTEN) --admin $(ADMIN)

demo: run

lint: install
	$(BIN)/ruff check proxy addons tests bench
	$(BIN)/ruff format --check proxy addons tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix proxy addons tests bench
	$(BIN)/ruff format proxy addons tests bench

test: lint
	$(BIN)/python -m pytest -q

unit: install
	$(BIN)/python -m pytest -q -m "not e2e and not browser and not postgres"

docs: install
	$(BIN)/python scripts/gen-docs

bench: install
	bash bench/setup.sh && $(BIN)/python bench/fleet.py --all && $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
