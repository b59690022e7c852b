# `make test` and `make demo` set everything up on a fresh machine: virtual environment,
# CPU PyTorch (torch==2.13.0 is the local CPU wheel), the package and its test tools.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP   = $(VENV)/.installed

.PHONY: test test-fast demo bench install clean slurm-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The SLURM test (tests/test_slurm.py) runs a single-node cluster: install its Debian packages when
# missing (needs root and apt-get; does nothing when they are there). Where that is impossible, the
# reason is printed and the SLURM test is skipped with it.
slurm-deps:
	@bash tests/slurm/install.sh || echo "make: the SLURM test will be skipped"

test: $(STAMP) slurm-deps
	$(BIN)/python -m pytest -q

# The edit-test loop: everything but the tests marked slow (real processes, captum sweeps, SLURM, fuzzing).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
