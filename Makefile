# Two commands on a fresh machine (Python >= 3.10 and pip only):
#   make run    install into .venv, then run the offline CPU demo with Snakemake
#   make test   install into .venv (with test tools), then ruff + pytest
#   make quick  ruff + the fast tests only (pytest -m "not slow"), for the edit-test loop
# Nothing here installs system packages: the real-Slurm test does so only where CI=true or
# DIFF_ERANK_INSTALL_SLURM=1 (tests/helpers/slurm_cluster.py), and is skipped with that advice elsewhere.
# Versions come from requirements/constraints.txt: torch==2.13.0 is the CPU wheel where a
# local one lies on disk (CI) and PyPI's regular CUDA wheel elsewhere.

PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
EXTRAS ?= dev
SNAKEMAKE_ARGS ?=
BIN    := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: install run test quick lint bench clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

run: install
	snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

lint: install
	ruff check .

test: install
	ruff check .
	pytest $(PYTEST_ARGS)

quick: install
	ruff check .
	pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	python benchmarks/bench_erank.py

clean:
	rm -rf $(VENV) .snakemake results/*/
