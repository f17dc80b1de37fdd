# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-quick lint dev bench install clean generate serve

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .  # setuptools is pinned in the lock: no download
	touch $(STAMP)

install: $(STAMP)

## Generate the default world, start the sandbox, materialize every asset, print a summary.
## PLATFORMS=mixed spreads the world's customers over Stripe, Chargebee, Recurly and Zuora.
PLATFORMS ?= stripe
run: $(STAMP)
	$(BIN)/billing-ai run --platforms $(PLATFORMS)

## Everything: lint, format, the import contracts, then the whole suite in parallel (the wheel test included).
## Tests of one module run on one worker (--dist loadscope): a module's shared fixtures are built once.
test: lint
	$(BIN)/pytest -q -n auto --dist loadscope

## The inner loop: no world warehouse, no emulator, no bench (tests marked slow; see billing_ai_tests/conftest.py).
test-quick: $(STAMP)
	$(BIN)/pytest -q -n auto --dist loadscope -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

## Sandbox + Dagster UI (http://127.0.0.1:3000) with every asset materializable.
dev: $(STAMP)
	$(BIN)/billing-ai dev

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf data/warehouse* data/world data/sandbox data/inbox data/reports .dagster_home
