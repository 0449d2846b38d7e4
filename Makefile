# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg | cksum | cut -d' ' -f1)
# The demo data ships inside this package; it is read with tifffile and needs
# none of its declared dependencies (napari etc.), hence --no-deps.
SAMPLEDATA := ndev-sampledata==0.0.3

.PHONY: demo test lint format benchmark clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(SAMPLEDATA)
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/python launch.py --config=configs/demo.py --workdir=runs/demo
	$(BIN)/python launch.py --mode=evaluate --config=configs/demo.py --workdir=runs/demo

# pytest on two workers, one test file each at a time (module fixtures built once): the suite
# is mostly single-threaded compiling. On the 2-core CPU machine, 2026-11-27: 356 tests took
# 925 s one at a time (`python -m pytest -q`, e72844a), 360 took 655 s on two workers (33cc2c1).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The full grid of benchmarks/README.md: meant for a GPU (hours on 2 CPU cores).
benchmark: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

# Removes the virtualenv and the demo's run only: other runs under runs/ are a user's results.
clean:
	rm -rf $(VENV) runs/demo
