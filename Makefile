# The two commands of the README: `make run` and `make test`. Each installs what it needs first,
# when .venv lacks it or is older than pyproject.toml: `run` the core package, `test` and `lint`
# the dev set (pytest, ruff and the ~1 GB deploy extra that the export tests need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE_STAMP := $(VENV)/.installed-core
DEV_STAMP := $(VENV)/.installed-dev
RUN_DIR ?= outputs/quickstart
PYTEST_ARGS ?=

.PHONY: install run test test-all lint clean gpu-check gpu-check-prepare

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(CORE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The dev set includes the core, so it stamps both.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(CORE_STAMP)

install: $(DEV_STAMP)

# Trains the quickstart (alpha 0.25 on the embedded `shapes` dataset) and evaluates best.pt.
run: $(CORE_STAMP)
	$(BIN)/mobilenet-train +experiment=quickstart hydra.run.dir=$(RUN_DIR)
	$(BIN)/mobilenet-eval $(RUN_DIR)/checkpoints/best.pt

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast set plus the tests marked slow.
test-all: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

# On a GPU machine, with that machine's own python3 and torch (nothing is installed into .venv): every CUDA
# path tested and the speed measured in under 8 minutes; results in $$OUT or gpu-check/ (docs/development.md).
# Where the machine reaches no package registry, `make gpu-check-prepare` first, here, puts the packages it
# lacks and ../shared's files it needs into .gpu-check/ (ignored; about 60 MiB) to travel with the checkout.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-prepare:
	scripts/gpu_check_prepare.sh

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache build src/*.egg-info *.egg-info
