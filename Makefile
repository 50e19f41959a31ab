# MINC: two commands do everything on a fresh machine with Python 3.11:
#   make demo    pretrain on the embedded MNIST digits (2 gloo processes, CPU), then a linear probe
#   make test    lint + the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/demo
export PYTHONUNBUFFERED := 1

.PHONY: help venv demo test test-fast lint format bench notebooks experiments clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its dev tools (automatic)

demo: $(STAMP) ## pretrain MINC on the digits (2 CPU processes), probe, table + report.png (ARGS="--seed 1")
	$(PY) -m scaled.tools.demo --output-dir $(RUN) $(if $(ARGS),-- $(ARGS))

test: $(STAMP) lint ## lint, then every test (slow, distributed and notebook tests included)
	$(PY) -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP) ## the tests not marked slow
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not slow"

lint: $(STAMP) ## ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP) ## CPU benchmarks (losses, variance, step, loader): JSON in runs/bench, tables into docs/results.md
	$(PY) -m scaled.tools.bench all --output-dir runs/bench --write-docs

notebooks: $(STAMP) ## build notebooks/*.ipynb from their jupytext .py pairs
	$(VENV)/bin/jupytext --to ipynb --update notebooks/[0-9]*.py

experiments: $(STAMP) ## the paper's ablations, 3 seeds (about 5 h on an idle 2-core CPU); JSON + PNG into docs/results/
	$(PY) -m scaled.tools.experiments all --output-dir docs/results

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache build dist *.egg-info
