# The two commands of the README: `make run` and `make test`. Both install first when
# .venv is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= outputs/quickstart
PYTEST_ARGS ?=

.PHONY: install run test test-all clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Trains the quickstart (alpha 0.25 on the embedded `shapes` dataset) and evaluates best.pt.
run: $(STAMP)
	$(BIN)/mobilenet-train +experiment=quickstart hydra.run.dir=$(RUN_DIR)
	$(BIN)/mobilenet-eval $(RUN_DIR)/checkpoints/best.pt

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast set plus the tests marked slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache build src/*.egg-info
