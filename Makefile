# Quick start: `make demo` (set up, then run the default pipeline) and `make test` (set up, then run the tests);
# `make test-fast` runs the unit tests only (not those marked slow or slurm); `make lint` runs ruff and snakemake --lint.
PYTHON ?= python3
CORES ?= 2
# test files run side by side on this many workers (a file's tests stay together: they share fixtures); the files
# start in the order tests/conftest.py gives, the longest first. One more worker than CI's 2 cores: test_slurm.py
# mostly waits for SLURM, and the other two keep the cores busy meanwhile
TEST_WORKERS ?= 3
# the unit tests (test-fast) have no waiting to overlap: one worker per core
FAST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST := $(BIN)/python -m pytest --dist loadfile --no-loadscope-reorder

.PHONY: setup demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	bash workflow/scripts/install-torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	bash workflow/scripts/install-data.sh
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/mapmerge summary results/demo

test: setup
	$(PYTEST) -n $(TEST_WORKERS)

test-fast: setup
	$(PYTEST) -n $(FAST_WORKERS) -m "not slow and not slurm"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
