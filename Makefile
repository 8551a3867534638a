# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean services-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demo $(DEMO_ARGS)

services-check:
	@bash tests/ensure_binaries.sh

test: $(STAMP) services-check
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check agent controller manifests tests bench demo
	$(BIN)/mypy agent manifests
	$(BIN)/mypy controller

bench: $(STAMP)
	EDGEFLEET_NEED_WRK=1 bash tests/ensure_binaries.sh
	for b in bench/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) demo-state test-artifacts
