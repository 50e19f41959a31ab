# MINC: two commands do everything on a fresh machine with Python 3.11:
#   make demo    pretrain on the embedded MNIST digits (2 gloo processes, CPU), then a linear probe
#   make test    lint + the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    ?= runs/demo
export PYTHONUNBUFFERED := 1

.PHONY: help venv demo test test-fast lint format bench notebooks experiments results gpu-check gpu-wheels clean

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

bench: $(STAMP) ## CPU benchmarks (losses, variance, step, loader): JSON in runs/bench and docs/results/, tables into docs/
	$(PY) -m scaled.tools.bench all --output-dir runs/bench --write-docs

notebooks: $(STAMP) ## build notebooks/*.ipynb from their jupytext .py pairs
	$(VENV)/bin/jupytext --to ipynb --update notebooks/[0-9]*.py

experiments: $(STAMP) ## the paper's ablations, 3 seeds (six runs recorded 72 min in all, docs/results.md); JSON + PNG into docs/results/
	$(PY) -m scaled.tools.experiments all --output-dir docs/results

results: $(STAMP) ## regenerate every table of docs/results.md and README from docs/results/*.json (CHECK=1: only compare)
	$(PY) -m scaled.tools.results $(if $(CHECK),--check)

# The GPU check runs with the machine's own Python (GPU_PYTHON, not .venv): GPU nodes often have
# their own torch and no package index. Wheels from `make gpu-wheels` (made where an index is
# reachable) install with --no-index into GPU_SITE; PYTHONPATH=. runs the checkout itself.
# (default: .venv's Python where it exists, as in a clone after `make test`; else python3)
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS ?= gpu-wheels
GPU_SITE   ?= .gpu-site
GPU_OUT    ?= runs/gpu-check
# pytest (for the no-host-sync test) and its pure-Python dependencies, and kornia (the device
# augmentation stage, the default loader on CUDA) with kornia-rs, a compiled wheel: it is fetched
# for the GPU node's Python and platform (GPU_PY_VERSION, GPU_PLATFORM), not this machine's
GPU_WHEEL_PINS := pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0 \
  kornia==0.9.0 kornia-rs==0.2.0
GPU_PY_VERSION ?= 3.12
GPU_PLATFORM   ?= manylinux_2_17_x86_64

gpu-check: ## on a CUDA node, <= 8 min: no-sync, device stage, bench, torchrun+SIGTERM+resume, linear_eval, compile, methods (DRY=1: CPU, 2 gloo procs)
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
	  $(GPU_PYTHON) -m pip install -q --no-index --no-deps --target $(GPU_SITE) $(GPU_WHEELS)/*.whl \
	  || for w in $(GPU_WHEELS)/*.whl; do $(GPU_PYTHON) -m zipfile -e $$w $(GPU_SITE); done; fi
	PYTHONPATH=.:$(GPU_SITE) $(GPU_PYTHON) -m scaled.tools.gpu_check $(if $(DRY),--dry-run) \
	  --output-dir $(GPU_OUT) --write-docs

gpu-wheels: ## download the few wheels gpu-check needs (pytest, kornia) into gpu-wheels/ (for offline nodes)
	$(GPU_PYTHON) -m pip download -q --no-deps --only-binary=:all: -d $(GPU_WHEELS) \
	  --python-version $(GPU_PY_VERSION) --implementation cp --platform $(GPU_PLATFORM) \
	  --platform manylinux2014_x86_64 --platform any $(GPU_WHEEL_PINS)
	@du -sh $(GPU_WHEELS)

# The fast suite under the lowest supported torch / torchvision (pyproject [tool.minc]) and the
# newest in the registry (`pip index versions torch` on 2026-12-07: 2.15.0; torchvision 0.29.2
# requires torch >= 2.14), each in its own venv built by tests/packaging/compat_venv.py
# (PyPI's CUDA builds, ~5-6 GB each; built once, reused while the pair and the script are the same).
COMPAT_LOWEST ?= 2.11.0 0.26.0
COMPAT_NEWEST ?= 2.15.0 0.29.2
COMPAT_PYTEST := -m pytest -n 2 --dist loadgroup -q -m "not slow"

test-compat-lowest: $(STAMP) ## the fast suite under torch 2.11 / torchvision 0.26 (.venv-compat-lowest)
	$(PY) tests/packaging/compat_venv.py .venv-compat-lowest $(COMPAT_LOWEST)
	.venv-compat-lowest/bin/python $(COMPAT_PYTEST)

test-compat-newest: $(STAMP) ## the fast suite under the newest torch / torchvision (.venv-compat-newest)
	$(PY) tests/packaging/compat_venv.py .venv-compat-newest $(COMPAT_NEWEST)
	.venv-compat-newest/bin/python $(COMPAT_PYTEST)

test-compat: test-compat-lowest test-compat-newest ## the fast suite under the lowest and the newest torch

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache build dist *.egg-info
