# Two commands on a fresh machine: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch. A lab node with an NVIDIA GPU can take the CUDA build instead, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test bench lint format docs paper clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(FIND_LINKS) $(TORCH)
	$(PIP) install -q $(FIND_LINKS) -e '.[dev,dask,docs]'
	@$(MAKE) --no-print-directory system-deps
	@touch $(STAMP)

# The radio server runs under the system Python with Debian's uhd (built against NumPy 1.x);
# the console's browser tests use Debian's chromium and chromium-driver.
system-deps:
	@if /usr/bin/python3 -c 'import uhd, zmq, numpy' 2>/dev/null; then \
		echo "system-deps: python3-uhd, python3-zmq, python3-numpy present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			python3-uhd python3-zmq python3-numpy >/dev/null) \
		|| echo "system-deps: apt-get could not install python3-uhd; the uhd tests will be skipped"; \
	else \
		echo "system-deps: not root or no apt; skipping python3-uhd (the real-radio tests will be skipped)"; \
	fi
	@# The console's browser tests drive Debian's chromium through its chromedriver (never a downloaded browser).
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "system-deps: chromium and chromedriver present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null) \
		|| echo "system-deps: apt-get could not install chromium; the browser tests will be skipped"; \
	else \
		echo "system-deps: not root or no apt; skipping chromium (the browser tests will be skipped)"; \
	fi

demo: setup
	$(VENV)/bin/testbed run configs/dryrun.yaml

test: setup
	$(PY) -m pytest -q

bench: setup
	@set -e; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The user guide into site/, warnings as errors (a broken link or reference fails the build; not
# with --quiet, which hides the warnings from the strict count). Its
# reference pages are generated from the code (docs/hooks.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The paper's figure in simulation: bench_paper runs the sweep and writes the figure, the table and
# the JSON into docs/paper/, which the guide's "Reproducing the paper's figure" page includes
# (60 full FL runs: about 20 minutes on 2 idle cores).
paper: setup
	$(PY) benchmarks/bench_paper.py --docs docs/paper

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs site .pytest_cache
